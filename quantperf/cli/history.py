"""`quantperf history`: add a run's results to the results store, derive a baseline from it, and
render its trend charts."""

from __future__ import annotations

import sys
from pathlib import Path


def _store(args):
    from ..history import open_store

    return open_store(args.store, args.branch)


def _cmd_add(args) -> int:
    from ..errors import ConfigError
    from ..history import from_results
    from ..summary import SessionSummary

    if args.push and not args.branch:
        raise ConfigError("--push needs --branch (a directory store is not pushed); nothing was stored")
    if not Path(args.results).is_file():
        raise ConfigError(f"{args.results}: no such results file (a results.jsonl written by the suite or "
                          "`quantperf run --out`)")
    summary = SessionSummary.read(args.summary).to_dict() if args.summary else None
    store = _store(args)
    sittings = from_results(args.results, summary, source_branch=args.source_branch, git_revision=args.git_revision)
    if not sittings:
        print(f"quantperf: {args.results}: holds no results (nothing stored)", file=sys.stderr)
        return 2
    for sitting in sittings:
        where = store.append(sitting)
        print(f"stored {sitting.profile}/{sitting.host} sitting {sitting.run_id}: {where}")
    if args.push:
        print(f"pushed {args.branch} to {args.push}: {store.push(args.push)}")
    return 0


def _profiles(args, store) -> list[str]:
    return [args.profile] if args.profile else store.profiles()


def _cmd_baseline(args) -> int:
    from ..history import derive_baseline
    from ..results import dump_json
    from ._common import write_outputs

    store = _store(args)
    loaded = store.read(args.profile, strict=True)
    data = derive_baseline(loaded.sittings, args.profile, args.window, args.source_branch)
    if args.mode:  # only these modes' configurations (e.g. kernel: the modes that gate across hosts)
        data["configs"] = {k: e for k, e in data["configs"].items() if (e.get("spec") or {}).get("mode") in args.mode}
    if args.into:
        return _into(args.into, args.profile, data)
    if args.out:
        return write_outputs([(args.out, dump_json(data))])
    sys.stdout.write(dump_json(data))
    return 0


def _into(directory: str, profile: str, data: dict) -> int:
    """The derived configurations written into the baselines file of `profile` in `directory`
    (validated first; its other configurations and its takeaways kept; atomic)."""
    from ..baselines import BaselineStore
    from ..config import BaselineFileModel, validate
    from ..results import atomic_write_text, dump_json

    target = BaselineStore(directory, profile)  # a corrupt or mismatched file fails here, untouched
    merged = dict(target.data)
    merged["configs"] = {**target.data.get("configs", {}), **data["configs"]}
    validate(BaselineFileModel, merged, target.path)
    atomic_write_text(target.path, dump_json(merged))
    print(f"{target.path}: {len(data['configs'])} configuration(s) from {data['provenance']['derived_from_sittings']} "
          f"sitting(s) of the store written; {len(merged['configs']) - len(data['configs'])} other(s) kept")
    return 0


def _cmd_report(args) -> int:
    from ..report.trends import trends_page
    from ._common import write_outputs

    store = _store(args)
    sittings, skipped = [], []
    for profile in _profiles(args, store):
        loaded = store.read(profile, strict=False)
        sittings += loaded.sittings
        skipped += loaded.skipped
    for line in skipped:
        print(f"quantperf: skipped {line}", file=sys.stderr)
    rc = write_outputs([(args.html, trends_page(sittings, skipped, title=args.title))])
    if rc == 0:
        print(f"wrote {args.html}")
    return rc


def add_parser(sub) -> None:
    p = sub.add_parser("history", help="the results store: add a run's results, derive a baseline, render trends")
    hs = p.add_subparsers(dest="history_cmd", required=True)

    def store_args(q):
        q.add_argument("store", help="the store: a directory, or with --branch a git repository")
        q.add_argument("--branch", help="keep the store on this branch of the git repository STORE (never the "
                                        "default branch)")

    a = hs.add_parser("add", help="store a run's results (results.jsonl) as one sitting per profile")
    store_args(a)
    a.add_argument("results", help="results.jsonl")
    a.add_argument("--summary", help="its summary.json (adds each configuration's gate outcome)")
    a.add_argument("--source-branch", help="the code's branch the run measured (baselines derive from the default's)")
    a.add_argument("--git-revision", help="the code's revision the run measured")
    a.add_argument("--push", metavar="REMOTE", help="with --branch: push the branch to REMOTE (never forced; when "
                                                    "another runner pushed first, its sittings are kept)")
    a.set_defaults(fn=_cmd_add)
    b = hs.add_parser("baseline", help="a baselines file derived from the last sittings of each host")
    store_args(b)
    b.add_argument("--profile", required=True)
    b.add_argument("--window", type=int, default=20, help="sittings per host (default 20)")
    b.add_argument("--source-branch", help="only sittings of this code branch")
    b.add_argument("-o", "--out", metavar="FILE", help="where to write (default: stdout)")
    b.add_argument("--mode", nargs="+", choices=["eager", "graph", "kernel"], help="only these modes' configurations")
    b.add_argument("--into", metavar="DIR", help="write the derived configurations into DIR/<profile>.json (a "
                                                 "baselines directory), replacing those configurations there and "
                                                 "keeping the file's others and its takeaways")
    b.set_defaults(fn=_cmd_baseline)
    r = hs.add_parser("report", help="trend charts of every configuration and metric, change points marked, as one "
                                     "self-contained HTML file")
    store_args(r)
    r.add_argument("--html", metavar="FILE", default="quantperf-history.html")
    r.add_argument("--profile", help="one profile (default: every profile in the store)")
    r.add_argument("--title", default="quantperf history")
    r.set_defaults(fn=_cmd_report)

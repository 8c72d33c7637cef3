"""`quantperf` command line: `profile`, `backends`, `run`, `gate`, `noise`, `sensitivity`, `upgrade-check`,
`compare`."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_profile(args) -> int:
    from .envinfo import environment, profile_id

    try:
        print(f"profile: {profile_id(args.device)}")
    except RuntimeError as exc:
        print(f"quantperf: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(environment(), indent=2, sort_keys=True))
    return 0


def _cmd_backends(args) -> int:
    from .backends import BACKENDS, get_backend

    devices = ("cpu", "cuda") if args.device == "all" else (_device(args.device),)
    for name, entry in BACKENDS.items():
        b = get_backend(name)
        where = []
        for dev in devices:
            reason = b.unavailable_reason(dev)
            where.append(f"{dev}: {'ok' if reason is None else 'unavailable (' + reason + ')'}")
        print(f"{name:20s} {entry.description}\n{'':20s} " + "; ".join(where))
    return 0


def _cmd_run(args) -> int:
    from .backends import BACKENDS
    from .scheduler import measure_many
    from .report import results_table
    from .results import ResultLog
    from .spec import RunSpec

    device = _device(args.device)
    backends = list(BACKENDS) if args.backend == ["all"] else [b for item in args.backend for b in item.split(",")]
    workload = _workload(args, device)
    specs = [RunSpec(m, b, device, mode, workload) for m in args.model for b in backends for mode in args.mode]
    log = ResultLog(args.out) if args.out else None
    results = []
    for spec in specs:  # one at a time, so each result is on disk as soon as it exists
        res = measure_many([spec], isolation=args.isolation,
                           model_options={"local_files_only": args.local_files_only, "trust_remote_code": args.trust_remote_code})[0]
        results.append(res)
        if log:
            log.append(res)
        line = f"{spec.id}: {res.status}"
        if not res.ok:
            line += f" ({res.reason})"
        elif "kernel_decode_us_per_layer" in res.metrics:
            line += (f" decode {res.metrics['kernel_decode_us_per_layer'].value:.2f} us/layer, prefill "
                     f"{res.metrics['kernel_prefill_us_per_layer'].value:.2f} us/layer")
        else:
            line += f" decode {res.metrics['decode_tokens_per_s'].value:.1f} tok/s"
        print(line, file=sys.stderr, flush=True)
    print(results_table(results, markdown=args.markdown))
    return 0 if all(r.status in ("ok", "unavailable", "mode-unsupported") for r in results) else 1


def _cmd_changed_pins(args) -> int:
    from pathlib import Path

    from .errors import ConfigError
    from .upgrade_env import changed_pins

    texts = []
    for f in (args.base, args.head):
        try:
            texts.append(Path(f).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{f}: cannot read ({exc.strerror})") from None
    for spec in changed_pins(texts[0], texts[1], args.head):
        print(spec)
    return 0


def _cmd_report(args) -> int:
    from .htmlreport import load, write

    data = load(args.runs, args.baselines)
    html_path = args.html or (None if args.markdown else "quantperf-report.html")
    for path in write(data, html_path, args.markdown, args.title):
        print(f"wrote {path}")
    return 0


def _cmd_noise(args) -> int:
    from .noise import gate_counts, load_runs, load_summaries, noise_rows
    from .report import noise_table

    print(noise_table(noise_rows(load_runs(args.runs)), markdown=args.markdown))
    if args.aa:
        print(f"A/A: {gate_counts(load_summaries(args.aa))}")
    if args.inject:
        print(f"injected slowdown: {gate_counts(load_summaries(args.inject))}")
    return 0


def _workload_args(p, rounds_help: str = "measured rounds") -> None:
    g = p.add_argument_group("workload (default: the matrix tier of the device, so results match the suite's "
                             "configuration ids and `quantperf gate` finds their baselines)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--prompt-tokens", type=int)
    g.add_argument("--new-tokens", type=int)
    g.add_argument("--rounds", type=int, help=rounds_help)
    g.add_argument("--warmup", type=int)
    g.add_argument("--matrix", default="benchmarks/matrix.toml", help="where the tier workloads come from")


def _workload(args, device: str):
    """The device's tier workload from the matrix (when the file is there), with any option given
    on the command line replacing its field."""
    from dataclasses import asdict
    from pathlib import Path

    from .matrix import load_matrix
    from .spec import Workload

    base = asdict(Workload())
    if Path(args.matrix).is_file():
        tier = next((t for t in load_matrix(args.matrix).values() if t.device == device), None)
        if tier is not None:
            base = asdict(tier.workload)
    given = {"batch_size": args.batch_size, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
             "rounds": args.rounds, "warmup_rounds": args.warmup}
    return Workload(**(base | {k: v for k, v in given.items() if v is not None}))


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cmd_sensitivity(args) -> int:
    """Run the noise experiment (or re-evaluate a stored one) and print its table."""
    from pathlib import Path

    from .errors import ConfigError
    from .gate import DEFAULT_ALPHA, DEFAULT_TOLERANCES, parse_tolerances, resolve_tolerance
    from .results import atomic_write_text, dump_json
    from .report import evaluation_table
    from .sensitivity import evaluate, run_experiment
    from .spec import RunSpec

    if args.source:
        path = Path(args.source)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file (a JSON file written by `quantperf sensitivity --out`)") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or "processes" not in raw or "spec" not in raw:
            raise ConfigError(f"{path}: not a noise experiment (fields 'spec' and 'processes' missing)")
    else:
        device = _device(args.device)
        spec = RunSpec(args.model, args.backend, device, args.mode, _workload(args, device))
        save = (lambda data: atomic_write_text(Path(args.out), dump_json(data))) if args.out else None
        raw = run_experiment(spec, processes=args.processes, slowdowns=args.slowdowns, variants=args.variants,
                             isolation=args.isolation, progress=lambda line: print(line, file=sys.stderr, flush=True),
                             checkpoint=save)
        if save:
            save(raw)
        if raw["status"] != "ok":
            print(f"quantperf: {spec.id}: {raw['status']}: {raw['reason']}", file=sys.stderr)
            return 0 if raw["status"] in ("unavailable", "mode-unsupported") else 1
    tolerance = resolve_tolerance([DEFAULT_TOLERANCES, parse_tolerances(args.tolerance or "")], "speed", raw["spec"]["mode"])
    ev = evaluate(raw, tolerance, args.alpha or DEFAULT_ALPHA)
    print(evaluation_table(ev, markdown=args.markdown))
    return 0


def _cmd_gate(args) -> int:
    """Gate (or record) stored results against a profile's baselines, without measuring: speed
    with the run-level gate over the file's configurations (session shift removed), memory and
    quality per configuration, and the takeaways whose both sides the file holds."""
    from pathlib import Path

    from .results import ResultLog
    from .divergence import QUALITY_METRICS
    from .suite import SuiteSession
    from .takeaways import evaluate, load_claims

    claims = load_claims(args.takeaways) if args.takeaways and Path(args.takeaways).is_file() else []
    failed = gated = 0

    def show(outcome, label):
        word = {"no-baseline": "SKIPPED", "skipped": "SKIPPED", "regressed": "FAILED", "error": "FAILED"}.get(
            outcome.status, outcome.status.upper())
        detail = outcome.message or "; ".join(v.line for v in outcome.verdicts if v.status != "ok")
        print(f"{word:12s} {label}" + (f": {detail}" if detail else ""))

    for path in args.results:
        if not Path(path).is_file():
            print(f"quantperf: {path}: no such results file (a results.jsonl written by the suite or `quantperf run --out`)",
                  file=sys.stderr)
            return 2
        results = ResultLog(path).read()
        if not results:
            print(f"quantperf: {path}: holds no results (nothing to gate)", file=sys.stderr)
            return 2
        profile = args.profile or next((r.profile for r in results if r.profile), None)
        if not profile:
            print(f"quantperf: {path}: results name no profile; pass --profile", file=sys.stderr)
            return 2
        session = SuiteSession(baselines_dir=Path(args.baselines), profiles={"cpu": profile, "cuda": profile},
                               record=args.record, record_hint="record one with `quantperf gate RESULTS --record`")
        latest = {(bool(r.quality), r.spec.id): r for r in results}  # a confirmation re-run replaces the first
        speed_results = [r for (q, _), r in latest.items() if not q and r.ok and session.has_baseline(r.spec)]
        speed = {} if args.record else session.gate_speed(speed_results)
        for (quality, cid), r in latest.items():
            label = f"{'quality ' if quality else ''}{cid}"
            if quality:
                outcomes = [session.gate_result(r, ("quality",), quality=True)]
            elif args.record:
                outcomes = [session.gate_result(r, ("speed", "memory"))]
            else:
                outcomes = [speed.get(cid) or session.gate_result(r, ("speed",)), session.gate_result(r, ("memory",))]
            for o in outcomes:
                show(o, f"{label} {o.kinds[0]}")
                failed += o.status in ("regressed", "error")
                gated += o.status not in ("no-baseline", "skipped")
        for note in dict.fromkeys(session.notes):
            print(f"{'SESSION':12s} {note}")
        store = session.store("cpu")
        for claim in claims:
            if not claim.applies_to(profile):
                continue
            a_spec, b_spec = claim.specs(next(iter(latest.values())).spec.workload)
            quality = claim.metric in QUALITY_METRICS
            a, b = latest.get((quality, a_spec.id)), latest.get((quality, b_spec.id))
            if a is None or b is None:
                continue
            recorded = store.takeaway(claim.id)
            result = evaluate(claim, a, b, profile, expected=claim.expected(profile) or (recorded or {}).get("verdict"))
            if args.record and result.verdict != "inconclusive":
                store.record_takeaway(claim.id, result.verdict, result.ratio, [result.low, result.high],
                                      {k: v for k, v in (b.environment or {}).get("packages", {}).items() if v}, b.timestamp)
                store.save()
            flipped = not args.record and result.verdict != "inconclusive" and not result.passed
            failed += flipped
            print(f"{'FLIPPED' if flipped else 'TAKEAWAY':12s} {result.message()}")
    if not gated:
        print("quantperf: no result had a baseline to be gated against: nothing was checked", file=sys.stderr)
        return 2
    return 1 if failed else 0


def _write_outputs(outputs: list[tuple[str | None, str]]) -> int:
    """Write report files atomically (a reader never sees half a file); 2 with one line on failure."""
    from .results import atomic_write_text

    for path, text in outputs:
        if not path:
            continue
        try:
            atomic_write_text(path, text)
        except OSError as exc:
            print(f"quantperf: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


def _upgrade_configs(args, device: str):
    """Speed configurations, quality configurations and quality params of an upgrade check: the
    device's matrix tier (like `quantperf run`'s workload), with --model/--backend/--mode replacing
    its lists."""
    from dataclasses import replace
    from pathlib import Path

    from .backends import entry
    from .errors import ConfigError
    from .matrix import load_matrix
    from .spec import RunSpec

    tier = None
    if Path(args.matrix).is_file():
        tier = next((t for t in load_matrix(args.matrix).values() if t.device == device), None)
    workload = _workload(args, device)
    backends = [b for item in (args.backend or []) for b in item.split(",")]
    for name in backends + list(args.quality_backend or []):
        entry(name)  # an unknown name fails now, before environment B is built
    specs = []
    if not args.no_speed:
        if args.model or backends or args.mode or tier is None:
            models = args.model or (list(dict.fromkeys(c.model for c in tier.configs)) if tier else ["synthetic:llama-tiny"])
            blist = backends or (list(dict.fromkeys(c.backend for c in tier.configs)) if tier else [])
            if not blist:
                raise ConfigError(f"no backend to check: give --backend (no matrix tier for {device} in {args.matrix})")
            specs = [RunSpec(m, b, device, mode, workload) for m in models for b in blist for mode in (args.mode or ["eager"])]
        else:
            specs = [replace(c, workload=workload) for c in tier.configs]
    quality_specs, params = [], {}
    if args.quality:
        tq = tier.quality_configs if tier else []
        model = args.quality_model or (tq[0].model if tq else "fixture")
        qbackends = args.quality_backend or backends or [c.backend for c in tq]
        if not qbackends:
            raise ConfigError("--quality: no backend to check: give --quality-backend or --backend")
        quality_specs = [RunSpec(model, b, device, "eager", workload) for b in qbackends]
        params = dict(tier.quality_params) if tier and tier.quality_params else {"context": 256, "max_windows": 16}
    if not specs and not quality_specs:
        raise ConfigError("nothing to check: --no-speed without --quality")
    return specs, quality_specs, params


def _cmd_upgrade_check(args) -> int:
    """Measure this environment (A) against it with other versions of named packages (B), side by
    side: speed per configuration, optionally quality and the takeaways. Exit 0: no change beyond
    tolerance; 1: regressed (slower, quality beyond limits, a flipped claim); 2: could not run."""
    from pathlib import Path

    from .envinfo import environment, profile_id
    from .errors import ConfigError
    from .gate import parse_tolerances
    from .report import format_table
    from .results import dump_json
    from .takeaways import load_claims
    from .upgrade import look_confidence, planned_looks, read_calibration, render_upgrade, run_upgrade_check
    from .upgrade_env import build_overlay, parse_requirements, same_environment

    if not args.aa and not args.packages:
        raise ConfigError("give the package(s) to change, e.g. quantperf upgrade-check 'bitsandbytes==0.49.0' "
                          "(or --aa for an A/A calibration)")
    if args.aa and args.calibration is None:
        print("quantperf: --aa without --calibration FILE: the A/A spread is reported, not stored", file=sys.stderr)
    if not args.aa:
        parse_requirements(args.packages, find_links=args.find_links or ())  # a bad spec fails before anything runs
    tolerances = [parse_tolerances(args.tolerance or "")]
    planned_looks(args.pairs, args.blocks, args.max_blocks)
    look_confidence(args.alpha, 1)
    device = _device(args.device)
    specs, quality_specs, qparams = _upgrade_configs(args, device)
    claims = load_claims(args.takeaways) if args.takeaways and Path(args.takeaways).is_file() else []
    profile = profile_id(device)
    calibration = read_calibration(args.calibration, profile) if args.calibration and not args.aa else None
    if args.aa and args.packages:
        print(f"quantperf: --aa: B is this environment; ignoring {' '.join(args.packages)}", file=sys.stderr)
    print("quantperf: building environment B", file=sys.stderr, flush=True)
    overlay = same_environment() if args.aa else build_overlay(
        args.packages, find_links=args.find_links or (), no_index=args.no_index, allow_changes=args.allow_changes)
    with overlay:
        print(overlay.describe(), file=sys.stderr, flush=True)
        report = run_upgrade_check(
            specs, overlay, aa=args.aa, pairs=args.pairs, blocks=args.blocks, max_blocks=args.max_blocks,
            alpha=args.alpha, tolerances=tolerances, calibration=calibration, quality_specs=quality_specs,
            quality_params=qparams, claims=claims, environment=environment(), profile=profile,
            model_options={"local_files_only": args.local_files_only, "trust_remote_code": args.trust_remote_code},
            progress=lambda line: print(line, file=sys.stderr, flush=True))
    code = report.exit_code(args.strict)
    data = report.to_dict() | {"exit_code": code}
    store = args.aa and args.calibration and bool((report.calibration or {}).get("modes"))
    if args.aa and args.calibration and not store:
        print(f"quantperf: no configuration was compared: {args.calibration} not written", file=sys.stderr)
    written = _write_outputs([(args.markdown, render_upgrade(report, format_table, markdown=True, strict=args.strict)),
                              (args.json, dump_json(data)),
                              (args.calibration if store else None, dump_json(report.calibration or {}))])
    print(render_upgrade(report, format_table, strict=args.strict))
    if store and not written:
        print(f"quantperf: A/A calibration stored in {args.calibration}; pass --calibration {args.calibration} to "
              "later upgrade checks on this machine", file=sys.stderr)
    return written or code


def _cmd_compare(args) -> int:
    """Stored OLD (results file or baseline profile) against stored NEW (results file)."""
    from .gate import parse_tolerances
    from .report import format_table
    from .results import dump_json
    from .upgrade import compare, compare_exit_code, render_compare

    result = compare(args.old, args.new, baselines_dir=args.baselines,
                     tolerances=[parse_tolerances(args.tolerance or "")], alpha=args.alpha)
    code = compare_exit_code(result)
    written = _write_outputs([(args.markdown, render_compare(result, format_table, markdown=True)),
                              (args.json, dump_json(result | {"exit_code": code}))])
    print(render_compare(result, format_table))
    return written or code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="quantperf", description="Performance regression suite for LLM quantization")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("profile", help="print the detected hardware profile and the environment")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(fn=_cmd_profile)
    p = sub.add_parser("backends", help="list backends and whether they can run here")
    p.add_argument("--device", default="all", choices=["all", "auto", "cpu", "cuda"])
    p.set_defaults(fn=_cmd_backends)
    p = sub.add_parser("run", help="measure configurations and print a table")
    p.add_argument("--model", nargs="+", default=["synthetic:llama-tiny"])
    p.add_argument("--backend", nargs="+", default=["all"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--mode", nargs="+", default=["eager"], choices=["eager", "graph", "kernel"])
    _workload_args(p)
    p.add_argument("--isolation", default="process", choices=["process", "inprocess"])
    p.add_argument("--out", help="append results to this JSON-lines file")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--local-files-only", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true", help="off by default: runs code from the checkpoint")
    p.set_defaults(fn=_cmd_run)
    p = sub.add_parser("noise", help="noise report over repeated runs: CV within/between runs, min detectable change")
    p.add_argument("--runs", nargs="+", required=True, help="results.jsonl files of repeated runs")
    p.add_argument("--aa", nargs="*", default=[], help="summary.json files of A/A re-runs against one baseline")
    p.add_argument("--inject", nargs="*", default=[], help="summary.json files of runs with an injected slowdown")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(fn=_cmd_noise)
    p = sub.add_parser("sensitivity", help="noise experiment on one configuration in fresh processes: CV within and "
                                            "between runs, A/A false alarms, injected-slowdown detection, ablations")
    p.add_argument("--model", default="synthetic:llama-tiny")
    p.add_argument("--backend", default="torch-fp32")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--mode", default="eager", choices=["eager", "graph", "kernel"])
    p.add_argument("--processes", type=int, default=10, help="fresh worker processes, one after another (>= 4 for gate trials)")
    _workload_args(p, rounds_help="measured rounds per side and process")
    p.add_argument("--slowdowns", type=float, nargs="*", default=[0.05, 0.10], help="injected slowdowns (0.05 = 5%%)")
    p.add_argument("--variants", nargs="*", default=None,
                   help="ablations interleaved with the clean side: gc-on, unpinned, long (eager only); "
                        "default: all the mode allows")
    p.add_argument("--isolation", default="process", choices=["process", "inprocess"])
    p.add_argument("--tolerance", help="gate tolerances as in --qp-tolerance, e.g. 'speed:5%%,speed.graph:3%%'")
    p.add_argument("--alpha", type=float)
    p.add_argument("--out", help="write the raw experiment (JSON) here")
    p.add_argument("--from", dest="source", help="re-evaluate a stored experiment instead of measuring")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(fn=_cmd_sensitivity)
    p = sub.add_parser("gate", help="gate stored results (results.jsonl) against baselines; --record records them, "
                                     "each file as one run, in order")
    p.add_argument("results", nargs="+")
    p.add_argument("--baselines", default="baselines")
    p.add_argument("--profile", help="profile id (default: the one recorded in the results)")
    p.add_argument("--record", action="store_true", help="write the results into the baselines (explicit, atomic)")
    p.add_argument("--takeaways", default="baselines/takeaways.toml", help="claims evaluated on the stored results")
    p.set_defaults(fn=_cmd_gate)
    p = sub.add_parser("upgrade-check", help="does upgrading a library change speed, quality or the takeaways here? "
                                              "both versions measured side by side in fresh process pairs")
    p.add_argument("packages", nargs="*", help="NAME==VERSION of each package to change in environment B")
    p.add_argument("--find-links", action="append", metavar="DIR", help="look for the packages in DIR (repeatable)")
    p.add_argument("--no-index", action="store_true", help="only the --find-links directories")
    p.add_argument("--allow-changes", action="store_true", help="also install the dependencies the new versions need")
    p.add_argument("--aa", action="store_true", help="A/A calibration: B is this same environment; with "
                                                      "--calibration FILE the observed spread is stored there")
    p.add_argument("--calibration", metavar="FILE", help="with --aa: write the A/A spread here; otherwise read it: each "
                   "mode's tolerance becomes max(configured, exp(k x A/A spread) - 1)")
    p.add_argument("--model", nargs="+", help="default: the matrix tier of the device")
    p.add_argument("--backend", nargs="+", help="default: the matrix tier of the device")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--mode", nargs="+", choices=["eager", "graph", "kernel"])
    p.add_argument("--quality", action="store_true", help="also compare B's outputs against A's on the fixture corpus")
    p.add_argument("--quality-model", help="default: the matrix tier's quality model (fixture)")
    p.add_argument("--quality-backend", nargs="+", help="default: --backend, else the tier's quality backends")
    p.add_argument("--no-speed", action="store_true", help="quality only")
    p.add_argument("--pairs", type=int, default=3, help="fresh process pairs per configuration (>= 3)")
    p.add_argument("--blocks", type=int, default=2, help="ABBA blocks per pair (2 rounds per side each)")
    p.add_argument("--max-blocks", type=int, help="blocks per configuration an inconclusive result may grow to, one "
                   "extra pair at a time; the confidence is split over the planned looks (default: no extension)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence of each interval (before the split)")
    p.add_argument("--tolerance", help="e.g. 'speed:5%%,speed.graph:2%%' (defaults: eager 5%%, graph 3%%, kernel 1%%)")
    p.add_argument("--takeaways", default="baselines/takeaways.toml", help="claims evaluated in A and in B")
    p.add_argument("--strict", action="store_true", help="an inconclusive configuration fails (exit 1)")
    p.add_argument("--markdown", metavar="FILE", help="write a markdown report (a PR comment, $GITHUB_STEP_SUMMARY)")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    _workload_args(p, rounds_help="unused: rounds are pairs x blocks x 2")
    p.add_argument("--local-files-only", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true", help="off by default: runs code from the checkpoint")
    p.set_defaults(fn=_cmd_upgrade_check)
    p = sub.add_parser("compare", help="stored results against stored results: OLD (results file or baseline "
                                        "profile) vs NEW (results file), ratio NEW/OLD with an interval per metric")
    p.add_argument("old", help="a results.jsonl, a baselines/<profile>.json or a profile name")
    p.add_argument("new", help="a results.jsonl (or a baseline)")
    p.add_argument("--baselines", default="baselines", help="where bare profile names are looked up")
    p.add_argument("--tolerance", help="e.g. 'speed:5%%,memory:2%%'")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--markdown", metavar="FILE")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(fn=_cmd_compare)
    p = sub.add_parser("changed-pins", help="the exact pins (NAME==VERSION) a dependency file's new version adds or "
                                            "changes against its old version, one per line (input of upgrade-check)")
    p.add_argument("base", help="the old requirements/constraints file or pyproject.toml")
    p.add_argument("head", help="the new one")
    p.set_defaults(fn=_cmd_changed_pins)
    for name, helptext in (("report", "render stored runs as one self-contained HTML file (plots embedded) and/or "
                                      "markdown: results.jsonl, summary.json, upgrade-check/compare JSON"),
                           ("merge", "the cross-hardware report: runs of several profiles (each runner's results and "
                                     "summary) in one configuration x profile and claim x profile matrix")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("runs", nargs="+", help="results.jsonl, summary.json or upgrade-check / compare JSON files")
        p.add_argument("--html", metavar="FILE", help="the HTML report (default: quantperf-report.html)")
        p.add_argument("--markdown", metavar="FILE", help="the markdown report")
        p.add_argument("--baselines", default=None if name == "report" else "baselines",
                       help="also show each profile's recorded takeaway verdicts from this directory")
        p.add_argument("--title", default="quantperf report" if name == "report" else "quantperf: measured across hardware")
        p.set_defaults(fn=_cmd_report)
    args = ap.parse_args(argv)
    from . import progress

    try:
        # a status line per long step on a terminal; silent in pipes and logs unless QUANTPERF_PROGRESS=log
        progress.activate(progress.Steps(log=progress.log_requested()))
        return args.fn(args)
    except BrokenPipeError:
        # the reader went away (`quantperf profile | head -1`): not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        from .errors import QuantperfError

        if isinstance(exc, QuantperfError):
            print(f"quantperf: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        progress.activate(None)


if __name__ == "__main__":
    sys.exit(main())

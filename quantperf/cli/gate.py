"""`quantperf gate`: gate (or record) stored results against a profile's baselines."""

from __future__ import annotations

import sys

from ._common import DEFAULT_TAKEAWAYS, takeaways_path


def _cmd_gate(args) -> int:
    """Gate (or record) stored results against a profile's baselines, without measuring: speed
    with the run-level gate over the file's configurations (session shift removed), memory and
    quality per configuration, and the takeaways whose both sides the file holds."""
    from pathlib import Path

    from ..divergence import QUALITY_METRICS
    from ..gate import FAILING, NOT_GATED, check_claim, label, load_claims
    from ..results import ResultLog
    from ..status import Status
    from ..suite import SuiteSession

    takeaways = takeaways_path(args.takeaways)  # a given path must exist: checked before anything is read
    claims = load_claims(takeaways) if takeaways else []
    failed = gated = 0

    def show(outcome, where):
        detail = outcome.message or "; ".join(v.line for v in outcome.verdicts if v.status != Status.OK)
        print(f"{label(outcome.status):12s} {where}" + (f": {detail}" if detail else ""))

    for path in args.results:
        if not Path(path).is_file():
            print(f"quantperf: {path}: no such results file (a results.jsonl written by the suite or `quantperf run "
                  "--out`)",
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
            name = f"{'quality ' if quality else ''}{cid}"
            if quality:
                outcomes = [session.gate_result(r, ("quality",), quality=True)]
            elif args.record:
                outcomes = [session.gate_result(r, ("speed", "memory"))]
            else:
                outcomes = [speed.get(cid) or session.gate_result(r, ("speed",)), session.gate_result(r, ("memory",))]
            for o in outcomes:
                show(o, f"{name} {o.kinds[0]}")
                failed += o.status in FAILING
                gated += o.status not in NOT_GATED
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
            result, _ = check_claim(claim, a, b, profile, store, record=args.record)
            flipped = not args.record and result.verdict != Status.INCONCLUSIVE and not result.passed
            failed += flipped
            print(f"{'FLIPPED' if flipped else 'TAKEAWAY':12s} {result.message()}")
    if not gated:
        print("quantperf: no result had a baseline to be gated against: nothing was checked", file=sys.stderr)
        return 2
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser("gate", help="gate stored results (results.jsonl) against baselines; --record records them, "
                                     "each file as one run, in order")
    p.add_argument("results", nargs="+")
    p.add_argument("--baselines", default="baselines")
    p.add_argument("--profile", help="profile id (default: the one recorded in the results)")
    p.add_argument("--record", action="store_true", help="write the results into the baselines (explicit, atomic)")
    p.add_argument("--takeaways", default=None,
                   help=f"claims evaluated on the stored results (default: {DEFAULT_TAKEAWAYS} if it exists)")
    p.set_defaults(fn=_cmd_gate)

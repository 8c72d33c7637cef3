"""`quantperf noise` and `quantperf sensitivity`: how noisy the measurements are (over repeated
runs, and in a noise experiment on one configuration)."""

from __future__ import annotations

import json
import sys

from ._common import device_of, workload_args, workload_of


def _cmd_noise(args) -> int:
    from ..experiments.noise import gate_counts, load_runs, load_summaries, noise_rows
    from ..report import noise_table

    print(noise_table(noise_rows(load_runs(args.runs)), markdown=args.markdown))
    if args.aa:
        print(f"A/A: {gate_counts(load_summaries(args.aa))}")
    if args.inject:
        print(f"injected slowdown: {gate_counts(load_summaries(args.inject))}")
    return 0


def _cmd_sensitivity(args) -> int:
    """Run the noise experiment (or re-evaluate a stored one) and print its table."""
    from pathlib import Path

    from ..errors import ConfigError
    from ..experiments.sensitivity import evaluate, run_experiment
    from ..gate import DEFAULT_ALPHA, DEFAULT_TOLERANCES, parse_tolerances, resolve_tolerance
    from ..report import evaluation_table
    from ..results import atomic_write_text, dump_json
    from ..spec import RunSpec
    from ..status import Status

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
        device = device_of(args.device)
        spec = RunSpec(args.model, args.backend, device, args.mode, workload_of(args, device))
        save = (lambda data: atomic_write_text(Path(args.out), dump_json(data))) if args.out else None
        raw = run_experiment(spec, processes=args.processes, slowdowns=args.slowdowns, variants=args.variants,
                             isolation=args.isolation, progress=lambda line: print(line, file=sys.stderr, flush=True),
                             checkpoint=save)
        if save:
            save(raw)
        if raw["status"] != Status.OK:
            print(f"quantperf: {spec.id}: {raw['status']}: {raw['reason']}", file=sys.stderr)
            return 0 if raw["status"] in (Status.UNAVAILABLE, Status.MODE_UNSUPPORTED) else 1
    tolerance = resolve_tolerance([DEFAULT_TOLERANCES, parse_tolerances(args.tolerance or "")], "speed",
                                  raw["spec"]["mode"])
    ev = evaluate(raw, tolerance, args.alpha or DEFAULT_ALPHA)
    print(evaluation_table(ev, markdown=args.markdown))
    return 0


def add_parser(sub) -> None:
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
    p.add_argument("--processes", type=int, default=10,
                   help="fresh worker processes, one after another (>= 4 for gate trials)")
    workload_args(p, rounds_help="measured rounds per side and process")
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

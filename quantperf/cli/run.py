"""`quantperf run`: measure configurations and print a table."""

from __future__ import annotations

import sys

from ._common import device_of, workload_args, workload_of


def _cmd_run(args) -> int:
    from ..backends import BACKENDS
    from ..report import results_table
    from ..results import ResultLog
    from ..scheduler import measure_many
    from ..spec import RunSpec
    from ..status import Status

    device = device_of(args.device)
    backends = list(BACKENDS) if args.backend == ["all"] else [b for item in args.backend for b in item.split(",")]
    workload = workload_of(args, device)
    specs = [RunSpec(m, b, device, mode, workload) for m in args.model for b in backends for mode in args.mode]
    log = ResultLog(args.out) if args.out else None
    results = []
    for spec in specs:  # one at a time, so each result is on disk as soon as it exists
        res = measure_many([spec], isolation=args.isolation,
                           model_options={"local_files_only": args.local_files_only,
                                          "trust_remote_code": args.trust_remote_code})[0]
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
    return 0 if all(r.status in (Status.OK, Status.UNAVAILABLE, Status.MODE_UNSUPPORTED) for r in results) else 1


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="measure configurations and print a table")
    p.add_argument("--model", nargs="+", default=["synthetic:llama-tiny"])
    p.add_argument("--backend", nargs="+", default=["all"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--mode", nargs="+", default=["eager"], choices=["eager", "graph", "kernel"])
    workload_args(p)
    p.add_argument("--isolation", default="process", choices=["process", "inprocess"])
    p.add_argument("--out", help="append results to this JSON-lines file")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--local-files-only", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true", help="off by default: runs code from the checkpoint")
    p.set_defaults(fn=_cmd_run)

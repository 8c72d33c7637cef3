"""Where one configuration's load, warm-up and round spend their time, in this process, with
cProfile: the phases that `time:` lines only total (issue #28). Prints, per backend, the wall
seconds of load, build (kernel mode: layer 0's copies and the captured inputs, what a pair builds at once),
warm-up and one round, then the functions with the most cumulative time of each.

    python scripts/profile_load.py --device cuda --mode kernel --model synthetic:llama-1b \
        --backend torch-fp16 bnb-nf4 torchao-int8wo [--top 15]

The first backend also pays this process's CUDA initialisation; each later one is loaded after
the one before it was closed, as on a shared process pair."""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time


def _profiled(fn):
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        out = fn()
    finally:
        prof.disable()
    return out, time.perf_counter() - t0, prof


def _top(prof: cProfile.Profile, n: int) -> str:
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(n)
    return "\n".join(line for line in text.getvalue().splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    from quantperf.spec import RunSpec
    from quantperf.workers import LocalWorker

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="synthetic:llama-1b")
    p.add_argument("--backend", nargs="+", default=["torch-fp16"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--mode", default="kernel")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    for backend in args.backend:
        w = LocalWorker(RunSpec(args.model, backend, args.device, args.mode))
        w.imports()
        w.prepare()
        info, load_s, load_prof = _profiled(w.load)
        if info["status"] != "ok":
            print(f"== {backend}: {info['status']}: {info.get('reason')}")
            w.close()
            continue
        if args.mode == "kernel":  # what a shared pair's processes do: the decode projections alone
            w.configure(shapes=["decode"], lm_head=False)
        _, build_s, build_prof = _profiled(w.build)
        _, warm_s, warm_prof = _profiled(w.warmup)
        t0 = time.perf_counter()
        w.rounds(n=1)
        round_s = time.perf_counter() - t0
        print(f"== {backend}: load {load_s:.2f} s, build {build_s:.2f} s, warm-up {warm_s:.2f} s, "
              f"one round {round_s:.2f} s")
        print(f"-- load\n{_top(load_prof, args.top)}\n-- build\n{_top(build_prof, args.top)}"
              f"\n-- warm-up\n{_top(warm_prof, args.top)}")
        w.unload()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

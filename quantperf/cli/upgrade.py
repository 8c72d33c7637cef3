"""`quantperf upgrade-check`, `quantperf compare` and `quantperf changed-pins`: does a library
upgrade change anything, measured side by side or read from stored results."""

from __future__ import annotations

import sys

from ._common import DEFAULT_TAKEAWAYS, device_of, takeaways_path, workload_args, workload_of, write_outputs


def _upgrade_configs(args, device: str):
    """Speed configurations, quality configurations and quality params of an upgrade check: the
    device's matrix tier (like `quantperf run`'s workload), with --model/--backend/--mode replacing
    its lists."""
    from dataclasses import replace
    from pathlib import Path

    from ..backends import entry
    from ..errors import ConfigError
    from ..matrix import load_matrix
    from ..models import check_synthetic
    from ..spec import RunSpec

    check_synthetic(list(args.model or []) + [args.quality_model or ""], "--model/--quality-model")
    tier = None
    if Path(args.matrix).is_file():
        tier = next((t for t in load_matrix(args.matrix).values() if t.device == device), None)
    workload = workload_of(args, device)
    backends = [b for item in (args.backend or []) for b in item.split(",")]
    for name in backends + list(args.quality_backend or []):
        entry(name)  # an unknown name fails now, before environment B is built
    specs = []
    if not args.no_speed:
        if args.model or backends or args.mode or tier is None:
            models = args.model or (list(dict.fromkeys(c.model for c in tier.configs)) if tier
                                   else ["synthetic:llama-tiny"])
            blist = backends or (list(dict.fromkeys(c.backend for c in tier.configs)) if tier else [])
            if not blist:
                raise ConfigError(f"no backend to check: give --backend (no matrix tier for {device} in {args.matrix})")
            specs = [RunSpec(m, b, device, mode, workload)
                     for m in models for b in blist for mode in (args.mode or ["eager"])]
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

    from ..envinfo import environment, profile_id
    from ..errors import ConfigError
    from ..experiments.environments import build_overlay, parse_requirements, same_environment
    from ..experiments.upgrade import read_calibration, run_upgrade_check
    from ..gate import load_claims, look_confidence, parse_tolerances, planned_looks
    from ..report.upgrade import render_upgrade
    from ..results import dump_json

    if not args.aa and not args.packages:
        raise ConfigError("give the package(s) to change, e.g. quantperf upgrade-check 'bitsandbytes==0.49.0' "
                          "(or --aa for an A/A calibration)")
    if args.aa and args.calibration is None:
        print("quantperf: --aa without --calibration FILE: the A/A spread is reported, not stored", file=sys.stderr)
    if not args.aa:
        parse_requirements(args.packages, find_links=args.find_links or ())  # a bad spec fails before anything runs
    takeaways = takeaways_path(args.takeaways)  # a given path must exist
    tolerances = [parse_tolerances(args.tolerance or "")]
    planned_looks(args.pairs, args.blocks, args.max_blocks)
    look_confidence(args.alpha, 1)
    device = device_of(args.device)
    specs, quality_specs, qparams = _upgrade_configs(args, device)
    claims = load_claims(takeaways) if takeaways else []
    profile = profile_id(device)
    calibration = read_calibration(args.calibration, profile) if args.calibration and not args.aa else None
    if args.aa and args.packages:
        print(f"quantperf: --aa: B is this environment; ignoring {' '.join(args.packages)}", file=sys.stderr)
    print("quantperf: building environment B", file=sys.stderr, flush=True)
    overlay = same_environment() if args.aa else build_overlay(
        args.packages, find_links=args.find_links or (), no_index=args.no_index, allow_changes=args.allow_changes,
        allow_sdist=args.allow_sdist)
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
    written = write_outputs([(args.markdown, render_upgrade(report, markdown=True, strict=args.strict)),
                              (args.json, dump_json(data)),
                              (args.calibration if store else None, dump_json(report.calibration or {}))])
    print(render_upgrade(report, strict=args.strict))
    if store and not written:
        print(f"quantperf: A/A calibration stored in {args.calibration}; pass --calibration {args.calibration} to "
              "later upgrade checks on this machine", file=sys.stderr)
    return written or code


def _cmd_compare(args) -> int:
    """Stored OLD (results file or baseline profile) against stored NEW (results file)."""
    from ..experiments.compare import compare, compare_exit_code
    from ..gate import parse_tolerances
    from ..report.upgrade import render_compare
    from ..results import dump_json

    result = compare(args.old, args.new, baselines_dir=args.baselines,
                     tolerances=[parse_tolerances(args.tolerance or "")], alpha=args.alpha)
    code = compare_exit_code(result)
    written = write_outputs([(args.markdown, render_compare(result, markdown=True)),
                              (args.json, dump_json(result | {"exit_code": code}))])
    print(render_compare(result))
    return written or code


def _cmd_changed_pins(args) -> int:
    from pathlib import Path

    from ..errors import ConfigError
    from ..experiments.environments import changed_pins

    texts = []
    for f in (args.base, args.head):
        try:
            texts.append(Path(f).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{f}: cannot read ({exc.strerror})") from None
    for spec in changed_pins(texts[0], texts[1], args.head):
        print(spec)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("upgrade-check", help="does upgrading a library change speed, quality or the takeaways here? "
                                              "both versions measured side by side in fresh process pairs")
    p.add_argument("packages", nargs="*", help="NAME==VERSION of each package to change in environment B")
    p.add_argument("--find-links", action="append", metavar="DIR", help="look for the packages in DIR (repeatable)")
    p.add_argument("--no-index", action="store_true", help="only the --find-links directories")
    p.add_argument("--allow-changes", action="store_true", help="also install the dependencies the new versions need")
    p.add_argument("--allow-sdist", action="store_true",
                   help="also install source distributions (built here: that runs their build code on this machine); "
                        "default: wheels only")
    p.add_argument("--aa", action="store_true", help="A/A calibration: B is this same environment; with "
                                                      "--calibration FILE the observed spread is stored there")
    p.add_argument("--calibration", metavar="FILE",
                   help="with --aa: write the A/A spread here; otherwise read it: each "
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
    p.add_argument("--takeaways", default=None,
                   help=f"claims evaluated in A and in B (default: {DEFAULT_TAKEAWAYS} if it exists)")
    p.add_argument("--strict", action="store_true", help="an inconclusive configuration fails (exit 1)")
    p.add_argument("--markdown", metavar="FILE", help="write a markdown report (a PR comment, $GITHUB_STEP_SUMMARY)")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    workload_args(p, rounds_help="unused: rounds are pairs x blocks x 2")
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

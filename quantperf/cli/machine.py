"""`quantperf profile` and `quantperf backends`: what this machine is and what can run on it."""

from __future__ import annotations

import json
import sys

from ._common import device_of


def _cmd_profile(args) -> int:
    from ..envinfo import environment, profile_id
    from ..errors import DeviceUnavailable

    try:
        print(f"profile: {profile_id(args.device)}")
    except DeviceUnavailable as exc:
        print(f"quantperf: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(environment(), indent=2, sort_keys=True))
    return 0


def _cmd_backends(args) -> int:
    from ..backends import BACKENDS, get_backend

    devices = ("cpu", "cuda") if args.device == "all" else (device_of(args.device),)
    for name, entry in BACKENDS.items():
        b = get_backend(name)
        where = []
        for dev in devices:
            reason = b.unavailable_reason(dev)
            where.append(f"{dev}: {'ok' if reason is None else 'unavailable (' + reason + ')'}")
        print(f"{name:20s} {entry.description}\n{'':20s} " + "; ".join(where))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="print the detected hardware profile and the environment")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(fn=_cmd_profile)
    p = sub.add_parser("backends", help="list backends and whether they can run here")
    p.add_argument("--device", default="all", choices=["all", "auto", "cpu", "cuda"])
    p.set_defaults(fn=_cmd_backends)

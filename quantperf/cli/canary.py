"""`quantperf newest` and `quantperf canary-report`: the canary workflow's two commands. `newest`
asks this interpreter's pip for a package's newest release (so the runner's index configuration,
pip.conf and PIP_* variables, applies), and with `--lock` says whether it is newer than the lock's
pin; `canary-report` merges the per-library reports of a canary run into the issue's markdown."""

from __future__ import annotations

import json
import re
import subprocess
import sys

PACKAGE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")  # PEP 508's name, nothing more


def _pip_error(stderr: str) -> str:
    """pip's complaint in one line: its last ERROR line, else its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1].removeprefix("ERROR:").strip()


def newest_release(package: str, *, pre: bool = False, allow_sdist: bool = False, find_links=(),
                   no_index: bool = False, python: str = sys.executable) -> str:
    """The newest release of `package` that `python -m pip install` would pick here, as its
    `--dry-run --report` names it (nothing is installed; pip reads the wheel's metadata): wheels only
    unless `allow_sdist`, as upgrade-check installs, pre-releases only with `pre`, for this
    interpreter's Python and platform. One ConfigError line when pip finds none or cannot run."""
    import contextlib
    import os
    import tempfile

    from packaging.version import InvalidVersion, Version

    from ..errors import ConfigError

    if not PACKAGE_NAME.fullmatch(package):
        raise ConfigError(f"newest: {package!r} is not a package name (a name such as transformers, no version)")
    fd, report = tempfile.mkstemp(prefix="quantperf-newest-", suffix=".json")
    os.close(fd)
    cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
           "--disable-pip-version-check", "--no-input", "--report", report]
    cmd += ["--pre"] if pre else []
    cmd += [] if allow_sdist else ["--only-binary", ":all:"]
    cmd += [arg for d in find_links for arg in ("--find-links", str(d))] + (["--no-index"] if no_index else [])
    try:
        out = subprocess.run(cmd + ["--", package], capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise ConfigError(f"newest {package}: pip found no release to install ({_pip_error(out.stderr)})")
        with open(report, encoding="utf-8") as f:
            data = json.load(f)
        installs = (data.get("install") if isinstance(data, dict) else None) or []
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"newest {package}: pip did not answer ({exc})") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(report)
    versions = [i["metadata"]["version"] for i in installs
                if isinstance(i, dict) and "version" in (i.get("metadata") or {})]
    if len(versions) != 1:
        raise ConfigError(f"newest {package}: pip's report names {len(versions)} packages, expected 1")
    try:
        Version(versions[0])  # a PEP 440 version: one line, safe to print where a workflow reads it
    except InvalidVersion:
        raise ConfigError(f"newest {package}: pip named {versions[0]!r}, not a PEP 440 version") from None
    return versions[0]


def newer_than(newest: str, pinned: str) -> bool:
    """Whether `newest` is a later release than `pinned`; a local label (`+cu128`, an index's
    build tag) is not a release of its own."""
    from packaging.version import Version

    return Version(Version(newest).public) > Version(Version(pinned).public)


def _cmd_newest(args) -> int:
    from pathlib import Path

    from packaging.utils import canonicalize_name

    from ..errors import ConfigError
    from ..experiments.environments import exact_pins

    pinned = None
    if args.lock:
        try:
            text = Path(args.lock).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--lock {args.lock}: cannot read ({exc.strerror})") from None
        pin = exact_pins(text, args.lock).get(canonicalize_name(args.package))
        if pin is None:
            raise ConfigError(f"--lock {args.lock}: pins no {args.package}==VERSION")
        pinned = pin.split("==", 1)[1]
    newest = newest_release(args.package, pre=args.pre, allow_sdist=args.allow_sdist,
                            find_links=args.find_links or (), no_index=args.no_index)
    if pinned is None:
        print(newest)
        return 0
    newer = newer_than(newest, pinned)
    print(f"library={args.package}\npinned={pinned}\nnewest={newest}\nnewer={str(newer).lower()}")
    return 0


def _cmd_canary_report(args) -> int:
    from ..report.canary import read_canary, render_canary
    from ..scheduler import now
    from ._common import write_outputs

    rows = read_canary(args.dir, args.library) if args.library else read_canary(args.dir)
    text = render_canary(rows, run_url=args.run_url, updated=now().replace("T", " ").replace("+00:00", " UTC"))
    written = write_outputs([(args.markdown, text)])
    if not args.markdown:
        print(text, end="")
    return written


def add_parser(sub) -> None:
    from ..report.canary import ARTIFACT_PREFIX, LIBRARIES

    p = sub.add_parser("newest", help="the newest release of a package as this interpreter's pip sees it "
                                      "(the index configuration of this machine applies)")
    p.add_argument("package", help="a package name, e.g. transformers")
    p.add_argument("--pre", action="store_true", help="also pre-releases")
    p.add_argument("--allow-sdist", action="store_true",
                   help="also versions with only a source distribution (default: wheels only, as upgrade-check)")
    p.add_argument("--find-links", action="append", metavar="DIR", help="also look in DIR (repeatable)")
    p.add_argument("--no-index", action="store_true", help="only the --find-links directories")
    p.add_argument("--lock", metavar="FILE", help="print library=, pinned= (FILE's pin), newest= and newer=true|false "
                                                  "lines, the format of $GITHUB_OUTPUT, instead of the version")
    p.set_defaults(fn=_cmd_newest)
    p = sub.add_parser("canary-report", help="the canary workflow's issue: one markdown page with a row per "
                                             "library from its jobs' reports")
    p.add_argument("dir", help=f"the folder holding {ARTIFACT_PREFIX}LIBRARY/ per library (canary.txt, report.json, "
                               "upgrade-check.log)")
    p.add_argument("--library", nargs="+", help=f"the rows, in order (default: {' '.join(LIBRARIES)}); other "
                                                f"{ARTIFACT_PREFIX}* folders found follow")
    p.add_argument("--run-url", help="the workflow run the issue links to")
    p.add_argument("--markdown", metavar="FILE", help="write the markdown here (default: print it)")
    p.set_defaults(fn=_cmd_canary_report)

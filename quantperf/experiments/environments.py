"""Environment B of an upgrade check: this environment with only the named packages swapped.

`build_overlay(["bitsandbytes==0.49.0"])` installs the named packages, and nothing else, into a
throw-away directory (`pip install --target OVERLAY --no-deps`, or `uv pip install --target` when
`uv` is on PATH) and returns an `Overlay`. A worker for side B is the same interpreter started
with `Overlay.env()` (PYTHONPATH = overlay first); torch and every other package come from the
base environment, so nothing heavy is downloaded twice and A and B differ only where asked.

Why PYTHONPATH works: PYTHONPATH entries sit in `sys.path` ahead of site-packages, and both the
import system and `importlib.metadata` (which walks `sys.path` in order and returns the first
distribution of a name) therefore find the overlay's package *and* its dist-info first. Two things
can still precede PYTHONPATH: the working directory (`sys.path[0]` of `python -m`/`-c`) and `.pth`
files that insert at the front. So nothing here is taken on trust: a child process of side B must
report, for every named package, the requested version *from the overlay directory*, and each of
its top-level modules must import *from the overlay*; anything else is an error. Further limits:
`.pth` files inside the overlay are not processed (it is not a site directory), and namespace
packages (`nvidia.*`, `google.*`) merge portions from both places.

Dependencies: the named packages' own requirements (markers evaluated in side B's interpreter)
must be satisfied by what side B sees. That is exactly what pip's resolver would leave alone
(it keeps installed versions that satisfy), so anything unsatisfied is what resolving "would
change"; it is refused, naming each, unless `allow_changes`, in which case the resolver is asked
(`pip install --dry-run --report -` against the base environment, or `uv pip install --dry-run`)
for the full set and those packages are added to the overlay too (`Overlay.changed`). Packages of
the base that require another version of a named package are reported in `Overlay.warnings`.

Specs: `NAME==VERSION` (or `===`). A bare `NAME` is accepted only together with `--find-links`
and means the newest version the installer finds in the given sources (only the find-links
directories under `--no-index`); the installed version is then what B reports. Ranges, extras,
URLs and markers are refused: B must be one exact, named environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import ConfigError
from .installers import (  # noqa: F401  (sources_label and _install_args: the report's and the tests' names)
    _binary_args,
    _failure_reason,
    _install_args,
    _install_cmd,
    _pick_installer,
    _source_args,
    _sources,
    sources_label,
)

# The libraries whose versions every upgrade check reports on both sides.
TRACKED = ("torch", "transformers", "bitsandbytes", "onnxruntime", "torchao")
# The directory that holds the `quantperf` package: side B's children must import it too.
PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
INSTALL_TIMEOUT_S = 3600
PROBE_TIMEOUT_S = 900  # an import check may import torch on a slow, busy machine
EXAMPLE = "bitsandbytes==0.49.0"


class OverlayError(ConfigError):
    """Environment B cannot be built as asked; the message is one line naming the package."""


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- specs -------------------------------------------------------------------------------------

def exact_pins(text: str, name: str = "") -> dict[str, str]:
    """`NAME==VERSION` pins of a requirements/constraints file or of a pyproject.toml (its
    dependencies and optional dependencies): canonical name -> the pin as written."""
    lines: list[str] = []
    if name.endswith(".toml"):
        import tomllib

        try:
            project = tomllib.loads(text).get("project", {})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{name}: not TOML ({exc})") from None
        optional = project.get("optional-dependencies", {}).values()
        lines = list(project.get("dependencies", [])) + [d for group in optional for d in group]
    else:
        lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    pins = {}
    for line in lines:
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        spec = list(req.specifier)
        if len(spec) == 1 and spec[0].operator in ("==", "===") and "*" not in spec[0].version and not req.url:
            pins[canonicalize_name(req.name)] = f"{req.name}=={spec[0].version}"
    return pins


def changed_pins(base: str, head: str, name: str = "") -> list[str]:
    """The head's exact pins that are new or differ from the base's (what a dependency pull
    request changes): the specs `upgrade-check` takes."""
    old, new = exact_pins(base, name), exact_pins(head, name)
    return [spec for key, spec in sorted(new.items()) if old.get(key) != spec and key != "quantperf"]


def parse_requirements(specs, *, find_links=()) -> list[Requirement]:
    """Parse `NAME==VERSION` specs (strings or Requirements). A bare `NAME` is accepted only when
    `find_links` is given (the newest version there). One ConfigError line per bad spec."""
    if isinstance(specs, (str, Requirement)):
        specs = [specs]
    specs = list(specs)
    if not specs:
        raise ConfigError(f"no package to change: give at least one NAME==VERSION, e.g. {EXAMPLE!r}")
    out, seen = [], {}
    for spec in specs:
        text = str(spec).strip()
        try:
            req = spec if isinstance(spec, Requirement) else Requirement(text)
        except InvalidRequirement:
            raise ConfigError(f"package spec {text!r} is not a requirement: expected NAME==VERSION, "
                              f"e.g. {EXAMPLE!r}") from None
        if req.url or req.extras or req.marker:
            raise ConfigError(f"package spec {text!r}: only NAME==VERSION is supported here (no extras, URLs "
                              f"or markers), e.g. {EXAMPLE!r}")
        pins = list(req.specifier)
        if not pins:
            if not find_links:
                raise ConfigError(f"package spec {text!r} has no version: pin one, e.g. '{req.name}==1.2.3' "
                                  f"(a bare name is allowed only with --find-links, meaning the newest version there)")
        elif len(pins) != 1 or pins[0].operator not in ("==", "===") or "*" in pins[0].version:
            raise ConfigError(f"package spec {text!r}: expected one exact version NAME==VERSION, e.g. {EXAMPLE!r}")
        key = canonicalize_name(req.name)
        if key == "quantperf":
            raise ConfigError(f"package spec {text!r}: quantperf itself cannot be swapped in environment B")
        if key in seen:
            raise ConfigError(f"package {req.name!r} is named twice ({seen[key]!r} and {text!r})")
        seen[key] = text
        out.append(req)
    return out


# -- child processes ---------------------------------------------------------------------------

# Children write their JSON answer to the original stdout and send everything else (a library that
# prints on import) to stderr.
_CHILD_PRELUDE = """
import json, os, sys
_out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
def answer(obj):
    _out.write(json.dumps(obj)); _out.flush()
"""

_VERSIONS = _CHILD_PRELUDE + """
import importlib.metadata as md
out = {}
for name in json.loads(sys.argv[1]):
    try:
        out[name] = md.version(name)
    except md.PackageNotFoundError:
        out[name] = None
answer(out)
"""

# Everything side B's interpreter can tell about its distributions, with the stdlib only (side B
# need not have `packaging`): the first distribution of each name on sys.path (the one that wins),
# its requirements, and the marker environment to evaluate them in.
_PROBE = _CHILD_PRELUDE + """
import importlib.metadata as md, platform, re
named = set(json.loads(sys.argv[1]))
def canon(n):
    return re.sub(r"[-_.]+", "-", n).lower()
def top_level(d):
    text = d.read_text("top_level.txt")
    if text:
        names = text.split()
    else:
        names = []
        for f in d.files or ():
            parts = f.parts
            if not parts or parts[0] in ("..", "bin", "__pycache__") or parts[0].endswith((".dist-info", ".data")):
                continue
            if len(parts) > 1:
                names.append(parts[0])
            elif f.suffix == ".py":
                names.append(f.stem)
            elif f.suffix in (".so", ".pyd"):
                names.append(parts[0].split(".")[0])
    names = [n.split("/")[0] for n in names]
    names = [n for n in dict.fromkeys(names) if n.isidentifier()]
    return [n for n in names if not n.startswith("_")] or names
v = sys.implementation.version
iver = f"{v.major}.{v.minor}.{v.micro}" + ("" if v.releaselevel == "final" else v.releaselevel[0] + str(v.serial))
marker_env = {
    "implementation_name": sys.implementation.name, "implementation_version": iver, "os_name": os.name,
    "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform,
}
dists = {}
for d in md.distributions():
    name = d.metadata["Name"]
    if not name or canon(name) in dists:
        continue
    entry = {"name": name, "version": d.version, "requires": d.requires or [],
             "location": os.path.realpath(str(d.locate_file("")))}
    if canon(name) in named:
        entry["modules"] = top_level(d)
    dists[canon(name)] = entry
answer({"marker_env": marker_env, "dists": dists})
"""

_IMPORTS = _CHILD_PRELUDE + """
import importlib, traceback
out = {}
for mod in json.loads(sys.argv[1]):
    try:
        m = importlib.import_module(mod)
        out[mod] = {"error": None, "file": getattr(m, "__file__", None), "path": list(getattr(m, "__path__", []) or [])}
    except BaseException as exc:
        out[mod] = {"error": traceback.format_exception_only(type(exc), exc)[-1].strip()}
answer(out)
"""


def _environ(env: dict | None) -> dict:
    """The environment of a child: this process's, plus `env` (as ProcessWorker builds it)."""
    out = dict(os.environ)
    out.update(env or {})
    return out


def _run_child(python: str, script: str, arg, env: dict | None, what: str, cwd: str | None = None):
    """Run a stdlib-only script in `python` with `env` added; its JSON answer, or an OverlayError."""
    try:
        proc = subprocess.run([python, "-c", script, json.dumps(arg)], env=_environ(env), capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT_S, cwd=cwd or tempfile.gettempdir())
    except FileNotFoundError:
        raise OverlayError(f"interpreter {python} does not exist") from None
    except subprocess.TimeoutExpired:
        raise OverlayError(f"{what}: no answer within {PROBE_TIMEOUT_S} s") from None
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = [line for line in proc.stderr.splitlines() if line.strip()]
        raise OverlayError(f"{what}: the interpreter exited with code {proc.returncode}"
                           + (f": {_one_line(tail[-1])}" if tail else "")) from None


def child_versions(env: dict | None, names, *, python: str = sys.executable) -> dict[str, str | None]:
    """importlib.metadata versions of `names` as a child process of `python` sees them, with `env`
    added to this process's environment (None where a package is missing)."""
    names = list(names)
    return _run_child(python, _VERSIONS, names, env, "reading package versions")


# -- installers (quantperf.experiments.installers builds the commands) ---------------------------

def _install(installer: str, python: str, target: Path, pins: list[str], find_links, no_index: bool,
             cwd: Path, allow_sdist: bool = False) -> None:
    cmd = _install_args(installer, python, target, pins, find_links, no_index, allow_sdist)
    try:
        proc = subprocess.run(cmd, env=_environ({}), capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                              cwd=str(cwd))
    except FileNotFoundError:
        raise OverlayError(f"interpreter {python} does not exist") from None
    except subprocess.TimeoutExpired:
        raise OverlayError(f"environment B: installing {' '.join(pins)} took over {INSTALL_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        reason = _failure_reason(proc.stderr + proc.stdout, find_links, no_index, pins, allow_sdist)
        raise OverlayError(_one_line(f"environment B: cannot install {' '.join(pins)}: {reason}"))


def _resolver_changes(installer: str, python: str, pins: list[str], find_links, no_index: bool,
                      cwd: Path, allow_sdist: bool = False) -> dict[str, str]:
    """What the resolver would install into the *base* environment for `pins`: {name: version}."""
    if installer == "uv":
        cmd = _install_cmd("uv", python) + ["--dry-run"]
    else:
        cmd = _install_cmd("pip", python) + ["--dry-run", "--quiet", "--report", "-"]
    cmd += _binary_args(installer, allow_sdist) + _source_args(find_links, no_index) + pins
    try:
        proc = subprocess.run(cmd, env=_environ({}), capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                              cwd=str(cwd))
    except subprocess.TimeoutExpired:
        raise OverlayError(f"environment B: resolving {' '.join(pins)} took over {INSTALL_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        reason = _failure_reason(proc.stderr + proc.stdout, find_links, no_index, pins, allow_sdist)
        raise OverlayError(_one_line(f"environment B (--allow-changes): cannot resolve {' '.join(pins)} "
                                     f"against the base environment: {reason}"))
    if installer == "uv":
        lines = proc.stderr + proc.stdout
        return {m.group(1): m.group(2) for m in re.finditer(r"^\s*\+ (\S+)==(\S+)\s*$", lines, re.M)}
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise OverlayError(f"environment B (--allow-changes): pip gave no readable --report for "
                           f"{' '.join(pins)}") from None
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in report.get("install", [])}


# -- checks ------------------------------------------------------------------------------------

def _contains(spec_req: Requirement, version: str) -> bool:
    try:
        return spec_req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return spec_req.specifier.contains(version, prereleases=True)


def _applies(req: Requirement, marker_env: dict) -> bool:
    return req.marker is None or req.marker.evaluate({**marker_env, "extra": ""})


def _check_named(probe: dict, reqs: dict, site: Path) -> None:
    """Every named package: present in B, from the overlay, at the requested version."""
    for key, req in reqs.items():
        d = probe["dists"].get(key)
        if d is None:
            raise OverlayError(f"environment B: {req.name} is not visible after installing it into {site} "
                               f"(does the wheel carry another project name?)")
        if os.path.realpath(d["location"]) != os.path.realpath(site):
            raise OverlayError(_one_line(
                f"environment B: {req.name} {d['version']} is found in {d['location']}, not in the overlay {site}: "
                f"something on sys.path precedes PYTHONPATH (the working directory, or a .pth file that inserts "
                f"at the front)"))
        if req.specifier and not _contains(req, d["version"]):
            raise OverlayError(f"environment B: {req.name} reports version {d['version']}, not {req.specifier}")


def _unsatisfied(probe: dict, keys) -> list[tuple]:
    """The named packages' requirements that side B (overlay + base) does not satisfy."""
    out = []
    for key in keys:
        d = probe["dists"][key]
        for line in d["requires"]:
            try:
                dep = Requirement(line)
            except InvalidRequirement:
                continue
            if not _applies(dep, probe["marker_env"]):
                continue
            have = probe["dists"].get(canonicalize_name(dep.name))
            if have is None:
                out.append((d, dep, None))
            elif dep.specifier and not _contains(dep, have["version"]):
                out.append((d, dep, have["version"]))
    return out


def _changes_message(missing) -> str:
    parts, names = [], []
    for d, dep, have in missing:
        dep_text = f"{dep.name}{dep.specifier}"
        base = f"base has {dep.name} {have}" if have else f"base has no {dep.name}"
        parts.append(f"{d['name']} {d['version']} needs {dep_text}, {base}")
        names.append(dep.name)
    return _one_line("; ".join(parts) + f": resolving would change {', '.join(dict.fromkeys(names))}; "
                     "pass --allow-changes to install those too", limit=1000)


def _reverse_conflicts(probe: dict, keys) -> list[str]:
    """Packages of the base that require another version of a package B changed."""
    keys = set(keys)
    out = []
    for key, d in probe["dists"].items():
        if key in keys:
            continue
        for line in d["requires"]:
            try:
                dep = Requirement(line)
            except InvalidRequirement:
                continue
            dkey = canonicalize_name(dep.name)
            if dkey not in keys or not dep.specifier or not _applies(dep, probe["marker_env"]):
                continue
            have = probe["dists"][dkey]["version"]
            if not _contains(dep, have):
                out.append(f"{d['name']} {d['version']} requires {dep.name}{dep.specifier}, B has {have}")
    return out


def _check_imports(python: str, env: dict, probe: dict, keys, site: Path, cwd: Path) -> None:
    modules = {mod: key for key in keys for mod in probe["dists"][key].get("modules", [])}
    if not modules:
        return
    names = ", ".join(probe["dists"][k]["name"] for k in dict.fromkeys(modules.values()))
    result = _run_child(python, _IMPORTS, list(modules), env, f"environment B: importing {names} crashed",
                        cwd=str(cwd))
    root = os.path.realpath(site)
    for mod, info in result.items():
        d = probe["dists"][modules[mod]]
        if info["error"]:
            raise OverlayError(_one_line(f"environment B: {d['name']} {d['version']} does not import "
                                         f"(import {mod}): {info['error']}"))
        where = [info["file"]] if info["file"] else info["path"]
        if where and not any(os.path.realpath(p).startswith(root + os.sep) for p in where):
            raise OverlayError(_one_line(f"environment B: module {mod} imports from {where[0]}, not from the overlay "
                                         f"{site}: something on sys.path precedes PYTHONPATH"))


# -- the overlay -------------------------------------------------------------------------------

@dataclass
class Overlay:
    """Side B of an upgrade check. `path` is None for an A/A calibration (B is A)."""

    path: Path | None
    python: str = sys.executable
    requirements: tuple = ()
    versions_a: dict = field(default_factory=dict)
    versions_b: dict = field(default_factory=dict)
    changed: dict = field(default_factory=dict)  # packages added by allow_changes: name -> version in B
    warnings: list = field(default_factory=list)
    installer: str | None = None
    find_links: tuple = ()  # where B's packages came from (with no_index: only there)
    no_index: bool = False
    allow_sdist: bool = False  # source distributions allowed (built here); default: wheels only
    _tmp: Path | None = field(default=None, repr=False)

    @property
    def sources(self) -> str:
        return sources_label(self.find_links, self.no_index)

    @property
    def names(self) -> list[str]:
        """The packages B differs in: the named ones, then those added by allow_changes."""
        return [r.name for r in self.requirements] + list(self.changed)

    def env(self) -> dict[str, str]:
        """Variables to add to this process's environment for a side-B worker (ProcessWorker's
        `env`): PYTHONPATH = overlay, then this process's PYTHONPATH, then the project root.
        Empty for an A/A overlay: B starts exactly like A."""
        if self.path is None:
            return {}
        parts = [str(self.path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        parts.append(PROJECT_ROOT)
        return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(parts))}

    def describe(self) -> str:
        def ver(versions, name):
            return f"{name} {versions.get(name) or '(not installed)'}"

        if self.path is None:
            same = [ver(self.versions_a, n) for n in self.versions_a if self.versions_a[n]]
            return "A/A calibration: B is the same environment as A" + (f"; {', '.join(same)}" if same else "")
        named = [r.name for r in self.requirements]
        lines = [f"A: {', '.join(ver(self.versions_a, n) for n in named)} | "
                 f"B: {', '.join(ver(self.versions_b, n) for n in named)} (overlay)"]
        if self.changed:
            lines.append("also changed in B (--allow-changes): " + ", ".join(
                f"{n} {self.versions_a.get(n) or '(not installed)'} -> {self.versions_b.get(n)}" for n in self.changed))
        rest = [n for n in self.versions_a if n not in named and n not in self.changed]
        same = [ver(self.versions_a, n) for n in rest
                if self.versions_a[n] and self.versions_a[n] == self.versions_b.get(n)]
        differ = [f"{n} A {self.versions_a[n]} | B {self.versions_b.get(n)}" for n in rest
                  if self.versions_a[n] != self.versions_b.get(n)]
        if same:
            lines.append("unchanged: " + ", ".join(same))
        if differ:
            lines.append("UNEXPECTEDLY different: " + ", ".join(differ))
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"A: this environment | B from: {self.sources} ("
                     + ("source distributions allowed: --allow-sdist" if self.allow_sdist else "wheels only") + ")")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"overlay": str(self.path) if self.path else None, "python": self.python,
                "requirements": [str(r) for r in self.requirements], "changed": dict(self.changed),
                "versions_a": dict(self.versions_a), "versions_b": dict(self.versions_b),
                "warnings": list(self.warnings), "installer": self.installer,
                "sources": None if self.path is None else self.sources, "allow_sdist": self.allow_sdist}

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "Overlay":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def same_environment(*, base_python: str = sys.executable, names=TRACKED) -> Overlay:
    """An A/A overlay: B is A (no packages, no PYTHONPATH change), for calibrating the comparison."""
    versions = child_versions({}, names, python=base_python)
    return Overlay(path=None, python=base_python, versions_a=versions, versions_b=dict(versions))


def build_overlay(requirements, *, base_python: str = sys.executable, find_links=(), no_index: bool = False,
                  workdir=None, allow_changes: bool = False, installer: str = "auto",
                  allow_sdist: bool = False) -> Overlay:
    """Build environment B: `requirements` (specs or Requirements) installed into a fresh overlay
    over `base_python`'s environment, verified in child processes. Raises ConfigError/OverlayError
    with one line; nothing is left on disk then. `installer`: 'auto' (uv when on PATH), 'pip', 'uv'."""
    if isinstance(find_links, (str, os.PathLike)):
        find_links = [find_links]
    find_links = [str(link) for link in find_links]
    for link in find_links:
        if "://" not in link and not Path(link).is_dir():
            raise ConfigError(f"--find-links {link}: no such directory")
    if no_index and not find_links:
        raise ConfigError("--no-index needs --find-links DIR: there would be nowhere to install from")
    reqs = {canonicalize_name(r.name): r for r in parse_requirements(requirements, find_links=find_links)}
    tool = _pick_installer(installer, base_python)
    tmp = Path(tempfile.mkdtemp(prefix="quantperf-overlay-", dir=workdir)).resolve()
    site = tmp / "site"
    ov = Overlay(path=site, python=base_python, requirements=tuple(reqs.values()), installer=tool, _tmp=tmp,
                 find_links=tuple(find_links), no_index=no_index, allow_sdist=allow_sdist)
    try:
        _install(tool, base_python, site, [str(r) for r in reqs.values()], find_links, no_index, tmp, allow_sdist)
        probe = _run_child(base_python, _PROBE, list(reqs), ov.env(), "inspecting environment B", cwd=str(tmp))
        _check_named(probe, reqs, site)
        # a bare name is now pinned to what was installed
        pins = [f"{r.name}=={probe['dists'][k]['version']}" for k, r in reqs.items()]
        keys = list(reqs)
        missing = _unsatisfied(probe, keys)
        if missing and not allow_changes:
            raise OverlayError(_changes_message(missing))
        if missing:
            extra = {n: v for n, v in _resolver_changes(tool, base_python, pins, find_links, no_index, tmp,
                                                        allow_sdist).items() if canonicalize_name(n) not in reqs}
            if not extra:
                raise OverlayError(_changes_message(missing).split(": resolving")[0]
                                   + ": the resolver proposes no change that would satisfy this")
            _install(tool, base_python, site, [f"{n}=={v}" for n, v in extra.items()], find_links, no_index, tmp,
                     allow_sdist)
            keys += [canonicalize_name(n) for n in extra]
            probe = _run_child(base_python, _PROBE, keys, ov.env(), "inspecting environment B", cwd=str(tmp))
            _check_named(probe, {canonicalize_name(n): Requirement(f"{n}=={v}") for n, v in extra.items()}, site)
            still = _unsatisfied(probe, keys)
            if still:
                raise OverlayError(_changes_message(still).split(": resolving")[0]
                                   + " even after installing " + ", ".join(f"{n} {v}" for n, v in extra.items()))
            # the project's own spelling (pip reports it, uv a normalized one)
            ov.changed = {probe["dists"][canonicalize_name(n)]["name"]: v for n, v in extra.items()}
        ov.warnings = _reverse_conflicts(probe, keys)
        _check_imports(base_python, ov.env(), probe, keys, site, tmp)
        names = list(dict.fromkeys([r.name for r in reqs.values()] + list(ov.changed) + list(TRACKED)))
        ov.versions_a = child_versions({}, names, python=base_python)
        ov.versions_b = child_versions(ov.env(), names, python=base_python)
        ov.warnings += [f"{r.name} {ov.versions_a[r.name]} is already the base's version: A and B do not differ in it"
                        for r in reqs.values() if ov.versions_a[r.name] == ov.versions_b[r.name]]
        return ov
    except BaseException:
        ov.cleanup()
        raise

"""The installers of an upgrade check's side B (pip or uv): which one, the command lines (wheels
only unless --allow-sdist, the package index unless --no-index), where the packages come from as
the report says it, and an installer's complaint in a few words."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ..errors import ConfigError


def _pick_installer(installer: str, python: str) -> str:
    if installer == "auto":
        return "uv" if shutil.which("uv") else "pip"
    if installer == "uv" and not shutil.which("uv"):
        raise ConfigError("installer 'uv' was asked for, but uv is not on PATH")
    if installer not in ("pip", "uv"):
        raise ConfigError(f"installer must be 'auto', 'pip' or 'uv', got {installer!r}")
    return installer


def _source_args(find_links, no_index: bool) -> list[str]:
    args = []
    for link in find_links:
        args += ["--find-links", str(link)]
    return args + (["--no-index"] if no_index else [])


def _binary_args(installer: str, allow_sdist: bool) -> list[str]:
    """Wheels only unless `allow_sdist`: building a source distribution runs its build code here."""
    if allow_sdist:
        return []
    return ["--no-build"] if installer == "uv" else ["--only-binary", ":all:"]


def sources_label(find_links, no_index: bool) -> str:
    """Where side B's packages come from, as the report says it."""
    if no_index:
        return f"--no-index: {', '.join(str(link) for link in find_links)} only"
    return " or ".join([f"--find-links {link}" for link in find_links] + ["package index"])


def _sdist_only(pins, find_links) -> list[str]:
    """The pinned packages of which a local --find-links directory holds a source distribution
    but no wheel: `name (file)` each."""
    out = []
    for pin in pins:
        try:
            name = canonicalize_name(Requirement(pin).name)
        except ValueError:
            continue
        files = [f for link in find_links if "://" not in str(link) and Path(link).is_dir()
                 for f in Path(link).iterdir()]

        def ours(f, name=name):
            return canonicalize_name(re.split(r"-\d", f.name, maxsplit=1)[0]) == name

        wheels = [f for f in files if f.name.endswith(".whl") and ours(f)]
        sdists = [f for f in files if f.name.endswith((".tar.gz", ".zip", ".tar.bz2")) and ours(f)]
        if sdists and not wheels:
            out.append(f"{Requirement(pin).name} ({sdists[0].name})")
    return out


def _sources(find_links, no_index: bool) -> str:
    where = [str(link) for link in find_links] + ([] if no_index else ["the package index"])
    return " or ".join(where)


def _install_cmd(installer: str, python: str) -> list[str]:
    if installer == "uv":
        return ["uv", "pip", "install", "--python", python]
    return [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]


def _failure_reason(stderr: str, find_links, no_index: bool, pins=(), allow_sdist: bool = True) -> str:
    """pip's or uv's complaint, in a few words. Under the wheels-only default, a package of which
    a --find-links directory holds only a source distribution is named with --allow-sdist."""
    where = _sources(find_links, no_index)
    if not allow_sdist and (only := _sdist_only(pins, find_links)):
        return (f"only a source distribution of {', '.join(only)} is there and the upgrade check installs wheels "
                "only: put a wheel in the --find-links directory, or pass --allow-sdist to let the installer build "
                "it (that runs the package's build code on this machine)")
    m = re.search(r"satisfies the requirement (\S+)(?: \(from ([^)]*)\))? \(from versions: ([^)]*)\)", stderr)
    if m:
        req, needed_by, versions = m.groups()
        by = f" (needed by {needed_by})" if needed_by else ""
        return f"{req}{by} is not in {where} (available: {versions.strip() or 'none'})"
    m = re.search(r"Because (.+?)(?: and you require [^,]*)?, we can conclude", stderr.replace("\n", " "))
    if m:  # uv
        return f"{' '.join(m.group(1).split())} (looked in {where})"
    m = re.search(r"The conflict is caused by:\n((?:[ \t]+\S.*\n?)+)", stderr)
    if m:
        return "conflict: " + "; ".join(line.strip() for line in m.group(1).splitlines())
    if "No module named pip" in stderr:
        return "this interpreter has no pip (install pip there, or put uv on PATH)"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR:", "error:"))]
    line = (errors or lines or ["no message"])[0]
    return re.sub(r"^(ERROR|error):\s*", "", line)


def _install_args(installer: str, python: str, target: Path, pins: list[str], find_links, no_index: bool,
                  allow_sdist: bool = False) -> list[str]:
    """The install command of side B: wheels only unless `allow_sdist`."""
    cmd = _install_cmd(installer, python) + ["--target", str(target), "--no-deps"]
    if installer == "uv":
        cmd.append("--compile-bytecode")  # as pip does: B must not pay bytecode compilation on first import
    return cmd + _binary_args(installer, allow_sdist) + _source_args(find_links, no_index) + pins

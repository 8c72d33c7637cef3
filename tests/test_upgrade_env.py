"""Environment B of an upgrade check (quantperf/experiments/environments.py), offline: tiny wheels written by
the test, a "base" made of a first overlay put on PYTHONPATH, and environment B built over it."""

import base64
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from offline import isolate_installers

from quantperf.errors import ConfigError
from quantperf.experiments.environments import (
    PROJECT_ROOT,
    Overlay,
    OverlayError,
    build_overlay,
    child_versions,
    parse_requirements,
    same_environment,
)

INSTALLERS = ["pip"] + (["uv"] if shutil.which("uv") else [])


def slowlib_body(version: str) -> str:
    return (f"__version__ = {version!r}\n\n"
            "def work(n):\n"
            "    total = 0\n"
            "    for i in range(n):\n"
            "        total += i * i\n"
            "    return total\n")


def build_wheel(directory, name: str, version: str, body: str, requires=()) -> Path:
    """Write a pure-Python wheel `name-version-py3-none-any.whl` into `directory`: one package
    `name` whose `__init__.py` is `body`, with `Requires-Dist` lines `requires`. No build tool,
    no network."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{dist}/__init__.py": body,
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: quantperf-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/top_level.txt": f"{dist}\n",
    }
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    out = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return out


@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> Path:
    """A find-links directory of tiny wheels."""
    d = tmp_path_factory.mktemp("wheels")
    for v in ("1.0", "2.0"):
        build_wheel(d, "qp_slowlib", v, slowlib_body(v))
        build_wheel(d, "qp_dep", v, f"__version__ = {v!r}\n")
    build_wheel(d, "qp_broken", "1.0", "raise RuntimeError('qp_broken refuses to import')\n")
    build_wheel(d, "qp_crash", "1.0", "import sys\nsys.stderr.write('qp_crash: fatal\\n')\nimport os\nos._exit(3)\n")
    build_wheel(d, "qp_needy", "1.0", "", requires=["packaging>=999"])
    build_wheel(d, "qp_wants", "1.0", "", requires=["qp_dep>=2", "qp_dep>=99; python_version < '3'"])
    build_wheel(d, "qp_user", "1.0", "", requires=["qp_slowlib<2"])
    return d


@pytest.fixture(scope="module")
def base(wheels, tmp_path_factory):
    """The base environment A = this venv + qp_slowlib 1.0, qp_dep 1.0, qp_user 1.0 on PYTHONPATH
    (seen by child processes only). Installers are cut off from every configured index and config."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_installers(mp)
        ov = build_overlay(["qp_slowlib==1.0", "qp_dep==1.0", "qp_user==1.0"], find_links=[wheels], no_index=True,
                           workdir=tmp_path_factory.mktemp("base"), installer="pip")
        mp.setenv("PYTHONPATH", str(ov.path))
        yield ov
        ov.cleanup()


def _child(env: dict, code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         cwd=os.path.dirname(PROJECT_ROOT), timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_parse_requirements():
    [r] = parse_requirements(["bitsandbytes==0.49.0"])
    assert (r.name, str(r.specifier)) == ("bitsandbytes", "==0.49.0")
    for bad, words in [("bitsandbytes=0.49.0", ["'bitsandbytes=0.49.0'", "NAME==VERSION", "bitsandbytes==0.49.0"]),
                       ("bitsandbytes>=0.49", ["exact version"]),
                       ("bitsandbytes[triton]==0.49.0", ["no extras"]),
                       ("bitsandbytes", ["no version", "--find-links"])]:
        with pytest.raises(ConfigError) as exc:
            parse_requirements([bad])
        assert all(w in str(exc.value) for w in words), str(exc.value)
        assert "\n" not in str(exc.value)
    assert parse_requirements(["bitsandbytes"], find_links=["wheels"])[0].name == "bitsandbytes"
    with pytest.raises(ConfigError, match="named twice"):
        parse_requirements(["torch==2.1", "Torch==2.2"])
    with pytest.raises(ConfigError, match="at least one"):
        parse_requirements([])


@pytest.mark.parametrize("installer", INSTALLERS)
def test_overlay_swaps_only_the_named_package(base, wheels, tmp_path, installer):
    with build_overlay(["qp_slowlib==2.0"], find_links=[wheels], no_index=True, workdir=tmp_path,
                       installer=installer) as ov:
        assert ov.path.is_dir() and ov.python == sys.executable
        # the overlay holds the named package and nothing else (uv adds a .lock file)
        listing = sorted(p.name for p in ov.path.iterdir() if p.name != "bin" and not p.name.startswith("."))
        assert listing == ["qp_slowlib", "qp_slowlib-2.0.dist-info"]
        env = ov.env()
        path = env["PYTHONPATH"].split(os.pathsep)
        assert path[0] == str(ov.path) and str(base.path) in path and path[-1] == PROJECT_ROOT
        assert ov.versions_a["qp_slowlib"] == "1.0" and ov.versions_b["qp_slowlib"] == "2.0"
        assert ov.versions_a["torch"] == ov.versions_b["torch"] == importlib.metadata.version("torch")
        assert child_versions({}, ["qp_slowlib", "qp_nothing"]) == {"qp_slowlib": "1.0", "qp_nothing": None}
        assert child_versions(env, ["qp_slowlib", "qp_dep"]) == {"qp_slowlib": "2.0", "qp_dep": "1.0"}
        # code and metadata both come from the overlay, and quantperf imports from B
        assert _child(env, "import qp_slowlib, importlib.metadata as m, quantperf.experiments.environments; "
                           "print(qp_slowlib.__version__, m.version('qp_slowlib'), qp_slowlib.work(4))") == "2.0 2.0 14"
        with pytest.raises(importlib.metadata.PackageNotFoundError):  # the parent is untouched
            importlib.metadata.version("qp_slowlib")
        text = ov.describe()
        assert "A: qp_slowlib 1.0 | B: qp_slowlib 2.0 (overlay)" in text
        assert f"torch {importlib.metadata.version('torch')}" in text.splitlines()[1]
        # qp_user (in the base) pins qp_slowlib<2: reported, not refused
        assert ov.warnings == ["qp_user 1.0 requires qp_slowlib<2, B has 2.0"]
        assert ov.to_dict()["versions_b"]["qp_slowlib"] == "2.0"
    assert not ov.path.exists()


def test_bare_name_takes_the_newest_in_find_links(base, wheels, tmp_path):
    with build_overlay(["qp_dep"], find_links=[wheels], no_index=True, workdir=tmp_path, installer="pip") as ov:
        assert ov.versions_b["qp_dep"] == "2.0" and ov.versions_a["qp_dep"] == "1.0"
        assert not ov.warnings


def test_same_environment(base):
    ov = same_environment()
    assert ov.env() == {} and ov.path is None
    assert ov.versions_a == ov.versions_b and ov.versions_a["torch"] == importlib.metadata.version("torch")
    assert ov.describe().startswith("A/A calibration: B is the same environment as A; torch ")
    ov.cleanup()
    assert isinstance(ov, Overlay)


def test_missing_version_names_package_version_and_directory(base, wheels, tmp_path):
    with pytest.raises(OverlayError) as exc:
        build_overlay(["qp_slowlib==9.9"], find_links=[wheels], no_index=True, workdir=tmp_path, installer="pip")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "qp_slowlib==9.9" in msg and str(wheels) in msg and "available: 1.0, 2.0" in msg, msg
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    with pytest.raises(OverlayError, match=r"qp_nothing==1\.0 is not in .*available: none"):
        build_overlay(["qp_nothing==1.0"], find_links=[wheels], no_index=True, workdir=tmp_path, installer="pip")


def test_bad_inputs_fail_before_installing(wheels, tmp_path):
    with pytest.raises(ConfigError, match="'qp_slowlib=2.0'.*NAME==VERSION"):
        build_overlay(["qp_slowlib=2.0"], find_links=[wheels], no_index=True, workdir=tmp_path)
    with pytest.raises(ConfigError, match="no such directory"):
        build_overlay(["qp_slowlib==2.0"], find_links=[tmp_path / "nowhere"], no_index=True)
    with pytest.raises(ConfigError, match="--no-index needs --find-links"):
        build_overlay(["qp_slowlib==2.0"], no_index=True)
    assert list(tmp_path.iterdir()) == []


def test_import_failure_is_reported(base, wheels, tmp_path):
    with pytest.raises(OverlayError) as exc:
        build_overlay(["qp_broken==1.0"], find_links=[wheels], no_index=True, workdir=tmp_path, installer="pip")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "qp_broken 1.0 does not import" in msg and "RuntimeError: qp_broken refuses to import" in msg, msg
    with pytest.raises(OverlayError) as exc:  # an import that kills the interpreter
        build_overlay(["qp_crash==1.0"], find_links=[wheels], no_index=True, workdir=tmp_path, installer="pip")
    msg = str(exc.value)
    assert "\n" not in msg and "importing qp_crash crashed" in msg and "code 3: qp_crash: fatal" in msg, msg
    assert list(tmp_path.iterdir()) == []


def test_same_version_as_the_base_is_a_warning(base, wheels, tmp_path):
    with build_overlay(["qp_slowlib==1.0"], find_links=[wheels], no_index=True, workdir=tmp_path,
                       installer="pip") as ov:
        assert ov.warnings == ["qp_slowlib 1.0 is already the base's version: A and B do not differ in it"]


def test_dependency_the_base_lacks_is_refused(base, wheels, tmp_path):
    have = importlib.metadata.version("packaging")
    with pytest.raises(OverlayError) as exc:
        build_overlay(["qp_needy==1.0"], find_links=[wheels], no_index=True, workdir=tmp_path, installer="pip")
    assert str(exc.value) == (f"qp_needy 1.0 needs packaging>=999, base has packaging {have}: resolving would "
                              f"change packaging; pass --allow-changes to install those too")
    # allowed, it still cannot be resolved from the wheel directory: said so, in one line
    with pytest.raises(OverlayError) as exc:
        build_overlay(["qp_needy==1.0"], find_links=[wheels], no_index=True, workdir=tmp_path, allow_changes=True,
                      installer="pip")
    msg = str(exc.value)
    assert "\n" not in msg and "--allow-changes" in msg and "packaging>=999" in msg and str(wheels) in msg, msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("installer", INSTALLERS)
def test_allow_changes_adds_the_needed_dependency(base, wheels, tmp_path, installer):
    with pytest.raises(OverlayError, match=r"qp_wants 1\.0 needs qp_dep>=2, base has qp_dep 1\.0: .*--allow-changes"):
        build_overlay(["qp_wants==1.0"], find_links=[wheels], no_index=True, workdir=tmp_path, installer=installer)
    with build_overlay(["qp_wants==1.0"], find_links=[wheels], no_index=True, workdir=tmp_path, allow_changes=True,
                       installer=installer) as ov:
        assert ov.changed == {"qp_dep": "2.0"} and ov.names == ["qp_wants", "qp_dep"]
        assert ov.versions_a["qp_dep"] == "1.0" and ov.versions_b["qp_dep"] == "2.0"
        assert ov.versions_a["qp_wants"] is None and ov.versions_b["qp_wants"] == "1.0"
        assert "also changed in B (--allow-changes): qp_dep 1.0 -> 2.0" in ov.describe()


def test_changed_pins_are_the_heads_new_or_changed_exact_pins():
    from quantperf.experiments.environments import changed_pins

    base = "torch==2.11.0\nbitsandbytes==0.49.2  # the GPU box\ntransformers>=4.56\n-r other.txt\n"
    head = "torch==2.11.0\nbitsandbytes==0.50.2\ntransformers>=4.57\ntorchao==0.18.0\n"
    assert changed_pins(base, head) == ["bitsandbytes==0.50.2", "torchao==0.18.0"]
    toml_base = ('[project]\ndependencies = ["torch==2.11.0"]\n[project.optional-dependencies]\n'
                 'gpu = ["bitsandbytes==0.49.2"]\n')
    toml_head = toml_base.replace("0.49.2", "0.50.2")
    assert changed_pins(toml_base, toml_head, "pyproject.toml") == ["bitsandbytes==0.50.2"]
    with pytest.raises(ConfigError, match="pyproject.toml: not TOML"):
        changed_pins("[project", toml_head, "pyproject.toml")


def test_the_project_root_holds_the_package():
    # side B's PYTHONPATH ends with the directory that holds `quantperf`, never the package itself
    # (which would make its modules importable by bare name: `config`, `stats`, ...)
    from pathlib import Path

    assert (Path(PROJECT_ROOT) / "quantperf" / "__init__.py").is_file()

"""Hardening of the command line (issue #25): misspelt paths and names are one line and exit 2,
write failures are one line, and the upgrade check installs wheels only unless told otherwise."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from quantperf.cli import main
from quantperf.errors import ResultsError

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra):
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, QUANTPERF_TEST_BACKENDS="1", **extra)


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "quantperf", *args], capture_output=True, text=True, env=_env(),
                          timeout=300, cwd=cwd)


def _one_line_exit_2(out, *needles):
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.startswith("quantperf:")]
    assert any(all(n in line for n in needles) for line in lines), out.stderr


# -- 4. --device cuda without a GPU: the command's own handler catches DeviceUnavailable only --
def test_profile_command_catches_only_device_unavailable(monkeypatch, capsys):
    from quantperf import envinfo

    def broken(device="auto"):
        raise RuntimeError("a bug, not a missing device")

    monkeypatch.setattr(envinfo, "profile_id", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # a real bug keeps its traceback
        main(["profile", "--device", "cpu"])


# -- 6. write failures ---------------------------------------------------------------------------
def test_report_into_an_unwritable_directory_is_one_line(tmp_path, capsys):
    from quantperf import RunSpec, Workload, measure_many
    from quantperf.results import ResultLog

    spec = RunSpec("fake:small", "fake-fp16", "cpu", "eager", Workload(prompt_tokens=4, new_tokens=4, rounds=3))
    ResultLog(tmp_path / "r.jsonl").append(measure_many([spec], isolation="inprocess", profile="cpu-test")[0])
    (tmp_path / "a-file").write_text("x")
    for option in ("--markdown", "--html"):
        assert main(["report", str(tmp_path / "r.jsonl"), option, str(tmp_path / "a-file" / "report")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("quantperf: cannot write") and "a-file" in err, err


def test_summary_read_of_arbitrary_json_is_one_results_error(tmp_path):
    from quantperf.summary import SessionSummary

    for doc in ([1, 2], {"configs": 3}, "text", {"profiles": {}, "configs": [{"x": 1}]}):
        path = tmp_path / "summary.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(ResultsError) as info:
            SessionSummary.read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: not a quantperf summary.json (") and "\n" not in message


def test_write_outputs_reports_a_store_write_error_in_one_line(tmp_path, capsys):
    from quantperf.cli._common import write_outputs

    (tmp_path / "a-file").write_text("x")
    assert write_outputs([(str(tmp_path / "a-file" / "report.md"), "text")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "report.md" in err


# -- 9. a misspelt --takeaways path ---------------------------------------------------------------
def test_gate_with_a_missing_takeaways_file_is_one_line(tmp_path):
    (tmp_path / "r.jsonl").write_text("")
    out = _cli(["gate", "r.jsonl", "--takeaways", "takeawys.toml"], tmp_path)
    _one_line_exit_2(out, "--takeaways", "takeawys.toml", "does not exist")


def test_upgrade_check_with_a_missing_takeaways_file_is_one_line(tmp_path):
    out = _cli(["upgrade-check", "--aa", "--device", "cpu", "--model", "fake:small", "--backend", "fake-fp16",
                "--takeaways", "takeawys.toml"], tmp_path)
    _one_line_exit_2(out, "--takeaways", "takeawys.toml", "does not exist")


def test_takeaways_default_is_used_when_present_and_silent_when_absent(tmp_path, monkeypatch):
    from quantperf.cli import _common

    monkeypatch.chdir(tmp_path)
    assert _common.takeaways_path(None) is None  # absent default: nothing, silently
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "takeaways.toml").write_text("")
    assert _common.takeaways_path(None) == "baselines/takeaways.toml"
    assert _common.takeaways_path("baselines/takeaways.toml") == "baselines/takeaways.toml"


# -- 11. an unknown synthetic shape ------------------------------------------------------------------
# `quantperf run` reports each bad name in one line and runs the rest (tests/test_cli.py::
# test_bad_names_give_one_line_each_and_the_run_continues); the upgrade check stops before building B.
def test_upgrade_check_with_an_unknown_synthetic_shape_is_one_line(tmp_path):
    out = _cli(["upgrade-check", "--aa", "--device", "cpu", "--model", "synthetic:nope", "--backend", "fake-fp16"],
               tmp_path)
    _one_line_exit_2(out, "--model", "unknown synthetic shape 'nope'", "llama-tiny")


# -- 13. the upgrade check installs wheels only unless --allow-sdist ---------------------------------
@pytest.mark.parametrize("installer, flag", [("pip", ["--only-binary", ":all:"]), ("uv", ["--no-build"])])
def test_the_install_command_is_binary_only_by_default(installer, flag, tmp_path):
    from quantperf.experiments import environments

    def contains(cmd, part):
        return any(cmd[i:i + len(part)] == part for i in range(len(cmd)))

    default = environments._install_args(installer, sys.executable, tmp_path / "site", ["x==1"], [], False)
    assert contains(default, flag)
    sdist = environments._install_args(installer, sys.executable, tmp_path / "site", ["x==1"], [], False,
                                       allow_sdist=True)
    assert not contains(sdist, flag)


def build_sdist(directory, name: str, version: str) -> Path:
    """A source distribution `name-version.tar.gz` (PKG-INFO, pyproject.toml, setup.py, one
    module), written with the standard library."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = f"{name}-{version}"
    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        "pyproject.toml": '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n',
        "setup.py": f"from setuptools import setup\nsetup(name={name!r}, version={version!r}, py_modules=[{name!r}])\n",
        f"{name}.py": "VALUE = 1\n",
    }
    out = directory / f"{base}.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{path}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out


def test_an_sdist_only_package_is_refused_naming_allow_sdist(tmp_path, monkeypatch):
    from offline import isolate_installers

    from quantperf.errors import ConfigError
    from quantperf.experiments.environments import build_overlay

    isolate_installers(monkeypatch)
    build_sdist(tmp_path / "dists", "qp_sdist_only", "1.0")
    with pytest.raises(ConfigError) as info:
        build_overlay(["qp_sdist_only==1.0"], find_links=[tmp_path / "dists"], no_index=True, workdir=tmp_path,
                      installer="pip")
    message = str(info.value)
    assert "qp_sdist_only" in message and "--allow-sdist" in message and "\n" not in message, message


def test_describe_names_where_side_b_came_from():
    from packaging.requirements import Requirement

    from quantperf.experiments.environments import Overlay

    def overlay(**kw):
        return Overlay(path=Path("site"), requirements=(Requirement("x==1"),), versions_a={"x": "0"},
                       versions_b={"x": "1"}, **kw)

    assert "A: this environment" in overlay().describe()
    assert "B from: package index" in overlay().describe()
    assert "B from: --find-links d1 or package index" in overlay(find_links=("d1",)).describe()
    assert "B from: --no-index: d1 only" in overlay(find_links=("d1",), no_index=True).describe()
    assert "wheels only" in overlay().describe()
    assert "source distributions allowed" in overlay(allow_sdist=True).describe()
    assert overlay(find_links=("d1",), no_index=True).to_dict()["sources"] == "--no-index: d1 only"

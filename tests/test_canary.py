"""The canary's two commands: `quantperf newest` names the release pip would install (from a local
wheel folder here, no network), and `quantperf canary-report` turns the per-library folders a
canary run leaves into one issue with a row per library, also for a library whose job stopped
before writing its report."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from quantperf.cli import main
from quantperf.cli.canary import newer_than
from quantperf.experiments.upgrade import ConfigCheck, UpgradeReport
from quantperf.report.canary import LIBRARIES, read_canary, render_canary

ROOT = Path(__file__).resolve().parent.parent


# -- synthetic canary folders --------------------------------------------------------------------

def _check(config_id, verdict=None, status="ok", message=""):
    return ConfigCheck(config_id, {"mode": config_id.rsplit("-", 1)[-1]}, status=status, verdict=verdict,
                       ratio=1.0 if verdict else None, low=0.99 if verdict else None,
                       high=1.01 if verdict else None, message=message)


def _report(configs, quality=(), takeaways=()) -> dict:
    rep = UpgradeReport(kind="upgrade", profile="nvidia-h100-80gb-hbm3", device="cuda", overlay={}, describe="A | B",
                        settings={"pairs": 3, "blocks": 2, "alpha": 0.05}, configs=list(configs),
                        quality=list(quality), takeaways=list(takeaways))
    return rep.to_dict() | {"exit_code": rep.exit_code()}


def _library(root: Path, library, pinned, newest, newer, *, exit_code=None, report=None, log=None) -> Path:
    d = root / f"canary-{library}"
    d.mkdir(parents=True)
    meta = f"library={library}\npinned={pinned}\nnewest={newest}\nnewer={newer}\n"
    (d / "canary.txt").write_text(meta + (f"exit_code={exit_code}\n" if exit_code is not None else ""))
    if report is not None:
        (d / "report.json").write_text(report if isinstance(report, str) else json.dumps(report))
    if log is not None:
        (d / "upgrade-check.log").write_text(log)
    return d


@pytest.fixture
def canary_run(tmp_path):
    """A run of the five libraries: torch regressed (a slower kernel and a flipped claim, one
    configuration not compared), transformers already newest, bitsandbytes faster, onnxruntime-gpu
    stopped before its report (environment B could not be built), torchao left no artifact."""
    root = tmp_path / "canary-reports"
    torch = _report([_check("llama-1b-torch-fp16-kernel", "regressed"), _check("llama-1b-bnb-nf4-kernel", "ok"),
                     _check("llama-1b-torch-fp16-eager", "inconclusive"),
                     _check("llama-1b-ort-int4-graph", status="error",
                            message="llama-1b-ort-int4-graph: side B (torch 2.13.0): crashed during pair 1")],
                    quality=[{"config_id": "quality-fixture-torch-fp16", "status": "ok", "verdict": "identical"}],
                    takeaways=[{"id": "small-int8-slower-than-fp16", "status": "flipped"},
                               {"id": "medium-int4-75pct-smaller", "status": "ok"}])
    assert torch["exit_code"] == 1
    _library(root, "torch", "2.11.0", "2.13.0", "true", exit_code=1, report=torch)
    _library(root, "transformers", "5.25.0", "5.25.0", "false")
    bnb = _report([_check("llama-1b-bnb-nf4-kernel", "improved"), _check("llama-1b-bnb-int8-kernel", "ok")])
    _library(root, "bitsandbytes", "0.50.2", "0.51.0", "true", exit_code=0, report=bnb)
    _library(root, "onnxruntime-gpu", "1.31.1", "1.32.0", "true", exit_code=2,
             log="quantperf: building environment B\nquantperf: environment B: onnxruntime-gpu==1.32.0: resolving "
                 "would change numpy; pass --allow-changes\n")
    return root


def _rows(root):
    return {r.library: r for r in read_canary(root)}


def test_a_row_per_library_with_its_counts_claims_and_failures(canary_run):
    rows = _rows(canary_run)
    assert list(rows) == list(LIBRARIES)
    torch = rows["torch"]
    assert (torch.pinned, torch.newest, torch.exit_code) == ("2.11.0", "2.13.0", 1)
    assert torch.speed == {"regressed": 1, "ok": 1, "inconclusive": 1}
    assert torch.quality == {"identical": 1} and torch.flipped == ["small-int8-slower-than-fp16"]
    assert len(torch.failures) == 1 and "crashed during pair 1" in torch.failures[0]
    assert rows["bitsandbytes"].speed == {"improved": 1, "ok": 1} and rows["bitsandbytes"].exit_code == 0
    assert rows["transformers"].newer is False and rows["transformers"].problem is None

    text = render_canary(list(rows.values()), run_url="https://example.invalid/run/1")
    lines = {line.split(" | ")[0].removeprefix("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 2.11.0 | 2.13.0 | exit 1: **regression or flipped claim** | 1 / 0 / 1 / 1 |" in lines["torch"]
    assert "small-int8-slower-than-fp16" in lines["torch"] and "| 1 identical |" in lines["torch"]
    assert "the lock pins the newest release: nothing to compare" in lines["transformers"]
    assert lines["torch"].endswith("| [canary-torch](https://example.invalid/run/1) |")  # the run holds the artifact
    assert "exit 0: no regression | 0 / 1 / 1 / 0 |" in lines["bitsandbytes"]
    assert ("**3 of 5 libraries have a release newer than the lock; regression or flipped claim: torch; "
            "could not compare: onnxruntime-gpu; newest release unknown: torchao.**") in text
    # the details name what regressed and what could not be compared, and where the full report is
    details = text.split("## torch 2.11.0 -> 2.13.0", 1)[1]
    assert "llama-1b-torch-fp16-kernel: slower x1.000 [0.990, 1.010]" in details
    assert "takeaway small-int8-slower-than-fp16: FLIPPED" in details
    assert "`canary-torch/report.md` in the artifact `canary-torch` of [this run](https://example.invalid/run/1)" \
        in details


def test_a_job_that_stopped_before_its_report_gets_a_row_naming_the_missing_file(canary_run):
    rows = _rows(canary_run)
    ort = rows["onnxruntime-gpu"]
    assert ort.problem == ("no `canary-onnxruntime-gpu/report.json` (upgrade-check exit 2; `quantperf: environment B: "
                           "onnxruntime-gpu==1.32.0: resolving would change numpy; pass --allow-changes`)")
    assert rows["torchao"].problem == "no `canary-torchao/canary.txt`: the job stopped before it looked up the " \
                                      "newest release"
    text = render_canary(list(rows.values()))
    row = next(line for line in text.splitlines() if line.startswith("| onnxruntime-gpu |"))
    assert "no `canary-onnxruntime-gpu/report.json`" in row
    assert row.endswith("| - | - | - | - | `canary-onnxruntime-gpu` |")
    assert "no `canary-torchao/canary.txt`" in text


def test_a_corrupt_report_and_a_failed_lookup_are_named(tmp_path):
    _library(tmp_path, "torch", "2.11.0", "2.13.0", "true", exit_code=1, report='{"configs": [')
    _library(tmp_path, "torchao", "0.18.0", "0.19.0", "true", exit_code=0, report="[1, 2]")
    d = tmp_path / "canary-transformers"
    d.mkdir()
    (d / "canary.txt").write_text("")
    (d / "newest.log").write_text("quantperf: newest transformers: pip found no release to install (Could not "
                                  "find a version that satisfies the requirement transformers)\n")
    rows = {r.library: r for r in read_canary(tmp_path, ["torch", "transformers", "torchao"])}
    assert rows["torch"].problem == "`canary-torch/report.json` unreadable: not an upgrade-check report " \
                                    "(JSONDecodeError)"
    assert rows["torchao"].problem == "`canary-torchao/report.json` unreadable: not an upgrade-check report " \
                                      "(no configs list)"
    assert rows["transformers"].problem.startswith("`canary-transformers/canary.txt` names no newest release: "
                                                   "`quantperf newest` failed (`quantperf: newest transformers: pip")
    assert "newest release unknown: transformers" in render_canary(list(rows.values()))


def test_legacy_words_and_extra_folders_are_read(tmp_path):
    report = _report([_check("a-kernel", "ok")])
    report["configs"][0]["verdict"] = "slower"  # a report written before the one vocabulary
    _library(tmp_path, "torch", "2.11.0", "2.13.0", "true", exit_code=1, report=report)
    _library(tmp_path, "accelerate", "1.15.0", "1.16.0", "true", exit_code=0, report=_report([_check("b-eager", "ok")]))
    rows = read_canary(tmp_path, ["torch"])
    assert [r.library for r in rows] == ["torch", "accelerate"]
    assert rows[0].speed == {"regressed": 1}


def test_canary_report_command_writes_the_issue(canary_run, tmp_path, capsys):
    out = tmp_path / "issue.md"
    assert main(["canary-report", str(canary_run), "--run-url", "https://example.invalid/run/2",
                 "--markdown", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# quantperf canary: the newest releases against the lock\n")
    assert "Updated 20" in text and " UTC by [this run](https://example.invalid/run/2)" in text
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + len(LIBRARIES)  # the header and a row each
    assert str(tmp_path) not in text  # folders are named relative to the run's artifacts
    assert main(["canary-report", str(tmp_path / "empty"), "--library", "torch"]) == 0
    assert "no `canary-torch/canary.txt`" in capsys.readouterr().out


def test_canary_report_needs_only_numpy_and_pydantic(canary_run, tmp_path):
    """The workflow's report job installs numpy and pydantic only (no torch): nothing else may be
    imported on the way to the issue."""
    allowed = {"numpy", "pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection",
               "quantperf", "_distutils_hack", "__editable___quantperf_0_1_0_finder"}
    guard = ("import sys\n"
             "class Deny:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        top = name.split('.')[0]\n"
             f"        if top not in sys.stdlib_module_names and top not in {sorted(allowed)!r}:\n"
             "            raise ImportError(f'not installed in the report job: {name}')\n"
             "sys.meta_path.insert(0, Deny())\n"
             "from quantperf.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "issue.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", guard, "canary-report", str(canary_run), "--markdown", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| torch | 2.11.0 | 2.13.0 |" in out.read_text()


# -- quantperf newest ----------------------------------------------------------------------------

def _wheel(folder: Path, name: str, version: str) -> None:
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


@pytest.fixture
def wheels(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    for version in ("1.0.0", "1.2.0", "1.10.0", "2.0rc1"):
        _wheel(folder, "demo-pkg", version)
    return folder


def _newest(capsys, *args) -> tuple[int, str, str]:
    code = main(["newest", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_newest_is_the_release_pip_would_install(wheels, capsys):
    local = ("--find-links", str(wheels), "--no-index")
    assert _newest(capsys, "demo-pkg", *local) == (0, "1.10.0\n", "")  # 1.10 > 1.2, no pre-release
    assert _newest(capsys, "demo-pkg", "--pre", *local)[1] == "2.0rc1\n"
    code, out, err = _newest(capsys, "no-such-pkg", *local)
    assert code == 2 and out == ""
    assert err.startswith("quantperf: newest no-such-pkg: pip found no release to install (") and err.count("\n") == 1
    # a name, never a spec or a pip option
    code, out, err = _newest(capsys, "demo-pkg==1.0.0", *local)
    assert (code, out) == (2, "") and err == "quantperf: newest: 'demo-pkg==1.0.0' is not a package name (a name " \
                                             "such as transformers, no version)\n"


def test_newest_against_the_lock_prints_github_output_lines(wheels, tmp_path, capsys):
    local = ("--find-links", str(wheels), "--no-index")
    lock = tmp_path / "constraints.txt"
    lock.write_text("# the lock\nDemo_Pkg==1.2.0  # pinned\nother==1.0\n")
    assert _newest(capsys, "demo-pkg", "--lock", str(lock), *local) == (
        0, "library=demo-pkg\npinned=1.2.0\nnewest=1.10.0\nnewer=true\n", "")
    lock.write_text("demo-pkg==1.10.0\n")
    assert _newest(capsys, "demo-pkg", "--lock", str(lock), *local)[1].endswith("newer=false\n")
    code, _, err = _newest(capsys, "torch", "--lock", str(lock), *local)
    assert code == 2 and err == f"quantperf: --lock {lock}: pins no torch==VERSION\n"


def test_a_local_label_is_not_a_newer_release():
    assert newer_than("2.13.0", "2.11.0") and newer_than("2.13.0+cu128", "2.11.0")
    assert not newer_than("2.13.0+cu128", "2.13.0") and not newer_than("2.11.0", "2.13.0")
    assert newer_than("5.25.0", "5.3.0")  # numeric, not lexical

"""The results store inside the suite (`pytest benchmarks --qp-history STORE`): every sitting kept,
the baselines derived from the store's sittings of the branch of record, trends in the report."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (imported before pytester snapshots sys.modules: torch cannot be imported twice)
from subrun import run_pytest

pytest_plugins = ["pytester"]

MATRIX = """
[tier.cpu]
device = "cpu"
models = ["fake:small"]
backends = ["fake-fp16", "fake-int8"]
modes = ["eager"]
workload = { batch_size = 1, prompt_tokens = 8, new_tokens = 6, warmup_rounds = 1, rounds = 5 }
"""

SHIPPED_TESTS = (Path(__file__).resolve().parents[1] / "benchmarks" / "test_regression.py").read_text()
# the shipped benchmark file uses no Hypothesis: its plugin stays out of the inner sessions (a second of imports each)
ARGS = ["--qp-matrix=matrix.toml", "--qp-takeaways=takeaways.toml", "--qp-baselines=baselines",
        "--qp-profile=cpu-test", "--qp-results=out/results.jsonl", "-p", "no:cacheprovider", "-W",
        "ignore::DeprecationWarning", "-k", "speed", "--qp-history=store", "-p", "no:hypothesispytest"]


BRANCH_VARS = ("GITHUB_HEAD_REF", "CI_COMMIT_REF_NAME", "QUANTPERF_HISTORY")


def write_project(path: Path) -> None:
    (path / "matrix.toml").write_text(MATRIX)
    (path / "takeaways.toml").write_text("")
    (path / "baselines").mkdir()
    (path / "test_bench.py").write_text(SHIPPED_TESTS)


@pytest.fixture(scope="module")
def first_sitting(tmp_path_factory):
    """The first sitting of the branch of record, in a fresh interpreter, once for the module: its
    session and the store it left, which the tests copy instead of sitting again."""
    d = tmp_path_factory.mktemp("first-sitting")
    write_project(d)
    result = run_pytest(d, *ARGS, env={"GITHUB_REF_NAME": "main"}, drop=BRANCH_VARS)
    return result, d / "store"


def with_first_sitting(project, first_sitting) -> None:
    shutil.copytree(first_sitting[1], project.path / "store")


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.setenv("QUANTPERF_TEST_BACKENDS", "1")
    for var in ("QUANTPERF_INJECT_DELAY_MS", *BRANCH_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GITHUB_REF_NAME", "main")
    write_project(pytester.path)
    return pytester


def sittings(root: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(root.glob("store/cpu-test/*/*.json"))]


def test_a_first_sitting_is_stored_and_the_second_is_gated_against_it(project, first_sitting):
    first = first_sitting[0]
    first.assert_outcomes(skipped=2)  # no baseline yet: the speed tests say so
    first.stdout.fnmatch_lines(["*history: sitting * of cpu-test (host *, 2 configuration(s)) stored*"])
    with_first_sitting(project, first_sitting)
    stored = sittings(project.path)
    assert len(stored) == 1 and stored[0]["source_branch"] == "main"
    assert sorted(stored[0]["configs"]) == [f"small-fake-{b}-cpu-bs1-p8-n6-eager" for b in ("fp16", "int8")]
    second = project.runpytest_subprocess(*ARGS)
    second.assert_outcomes(passed=2)  # gated against the first sitting: not skipped
    second.stdout.fnmatch_lines(["*baseline of cpu-test: 2 configuration(s) derived from 1 sitting(s)*"])
    assert len(sittings(project.path)) == 2
    # the baselines file was never written: the baseline lives in the store
    assert not list((project.path / "baselines").glob("*.json"))
    # until asked: the derived baseline written into the baselines directory gates a run without the store
    out = subprocess.run([sys.executable, "-m", "quantperf", "history", "baseline", "store", "--profile", "cpu-test",
                          "--into", "baselines"], cwd=project.path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "2 configuration(s) from 2 sitting(s) of the store written" in out.stdout
    data = json.loads((project.path / "baselines" / "cpu-test.json").read_text())
    assert [len(e["metrics"]["decode_tokens_per_s"]["runs"]) for e in data["configs"].values()] == [2, 2]
    args = [a for a in ARGS if not a.startswith("--qp-history")]
    project.runpytest_subprocess(*args).assert_outcomes(passed=2)


def test_sittings_of_another_branch_are_kept_but_never_a_baseline(project, monkeypatch):
    monkeypatch.setenv("GITHUB_HEAD_REF", "bump-torch")
    project.runpytest_subprocess(*ARGS).assert_outcomes(skipped=2)
    assert sittings(project.path)[0]["source_branch"] == "bump-torch"
    again = project.runpytest_subprocess(*ARGS)
    again.assert_outcomes(skipped=2)  # the pull request's own sitting does not gate it
    again.stdout.fnmatch_lines(["*no baseline for *"])
    assert len(sittings(project.path)) == 2


def test_the_report_shows_the_store_trends(project, first_sitting):
    with_first_sitting(project, first_sitting)
    project.runpytest_subprocess(*ARGS, "--qp-report=rep").assert_outcomes(passed=2)
    html = (project.path / "rep" / "report.html").read_text()
    assert "<svg" in html and "decode_tokens_per_s" in html and "small-fake-fp16-cpu-bs1-p8-n6-eager" in html


def test_a_corrupt_sitting_fails_loudly_naming_its_file(project, first_sitting):
    with_first_sitting(project, first_sitting)
    (bad,) = project.path.glob("store/cpu-test/*/*.json")
    bad.write_text('{"schema_version": 1, "profile": "cpu-te')
    result = project.runpytest_subprocess(*ARGS)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([f"*{bad.name}*"])
    assert bad.read_text().endswith("cpu-te")  # nothing was repaired or replaced behind the user's back


def test_options_that_do_not_fit_are_one_usage_line(project):
    result = project.runpytest_inprocess(*ARGS, "--qp-history-push=origin")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--qp-history-push needs --qp-history-branch*"])
    args = [a for a in ARGS if not a.startswith("--qp-history")]
    result = project.runpytest_inprocess(*args, "--qp-history-branch=results")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--qp-history-branch only applies with --qp-history STORE*"])

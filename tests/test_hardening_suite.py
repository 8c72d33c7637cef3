"""Hardening of the suite's session and the pytest plugin (issue #25): write failures fail the
configuration they concern, the baseline is read before anything is measured, the quality
verdicts that need no baseline are given on a new machine, and bad options are one line."""

import json
import math

import pytest
import torch  # imported before pytester snapshots sys.modules: torch cannot be imported twice  # noqa: F401
from test_plugin import TAKEAWAYS

from quantperf import RunSpec, Workload
from quantperf.errors import ConfigError
from quantperf.gate import load_claims
from quantperf.results import RunResult
from quantperf.status import Status
from quantperf.suite import Fail, SuiteSession, Warn

pytest_plugins = ["pytester"]

W = Workload(batch_size=1, prompt_tokens=4, new_tokens=6, warmup_rounds=0, rounds=3)
W7 = Workload(batch_size=1, prompt_tokens=8, new_tokens=12, warmup_rounds=1, rounds=7)  # a conclusive claim
FP16 = RunSpec("fake:small", "fake-fp16", "cpu", "eager", W)
INT8 = RunSpec("fake:small", "fake-int8", "cpu", "eager", W)

CLAIM = TAKEAWAYS  # the plugin tests' claim: fake-int8 decodes slower than fake-fp16


def _session(tmp_path, **kw):
    kw.setdefault("baselines_dir", tmp_path / "baselines")
    return SuiteSession(profiles={"cpu": "cpu-test"}, isolation="inprocess", **kw)


def _claim(tmp_path):
    path = tmp_path / "takeaways.toml"
    path.write_text(CLAIM)
    return load_claims(path)[0]


def _under_a_file(tmp_path):
    (tmp_path / "a-file").write_text("not a directory\n")
    return tmp_path / "a-file" / "baselines"


# -- 6. write failures fail the configuration they concern -------------------------------------
def test_a_baseline_that_cannot_be_written_is_an_error_not_recorded(tmp_path):
    session = _session(tmp_path, baselines_dir=_under_a_file(tmp_path), record=True)
    res = session.measure(FP16)
    outcome = session.gate_result(res, ("speed", "memory"))
    assert outcome.status == Status.ERROR
    assert "cannot write the baseline file" in outcome.message and "a-file" in outcome.message
    assert "\n" not in outcome.message
    assert not session.recorded
    with pytest.raises(Fail, match="cannot write the baseline file"):
        session.raise_for(outcome)
    # a later kind of the same configuration is not reported as recorded with the first
    assert session.gate_result(res, ("memory",)).status == Status.ERROR


def test_a_takeaway_that_cannot_be_recorded_fails_the_claim(tmp_path, monkeypatch):
    from quantperf.gate import takeaways

    def conclusive(claim, a, b, profile, confidence=0.95, expected="file"):  # the timing is not under test
        return takeaways.ClaimResult(claim, profile, Status.HOLDS, expected, 0.7, 0.6, 0.8, confidence)

    monkeypatch.setattr(takeaways, "evaluate", conclusive)
    session = _session(tmp_path, baselines_dir=_under_a_file(tmp_path), record=True, claims=[_claim(tmp_path)])
    with pytest.raises(Fail, match="cannot write the baseline file"):
        session.check_claim(_claim(tmp_path), W7)
    assert not session.recorded


def test_a_result_that_cannot_be_logged_fails_its_configuration_and_its_partner(tmp_path):
    results = tmp_path / "out" / "results.jsonl"
    session = _session(tmp_path, record=True, results_path=results, claims=[_claim(tmp_path)])
    results.mkdir(parents=True)  # appending to it now fails (IsADirectoryError)
    with pytest.raises(Fail, match="cannot write the results file .*results.jsonl"):
        session.check(FP16, ("speed", "memory"))
    # the partner was measured with it (interleaved): its test fails with the same line, not ok
    with pytest.raises(Fail, match="cannot write the results file"):
        session.check(INT8, ("speed", "memory"))
    assert not session.recorded
    assert not (tmp_path / "baselines" / "cpu-test.json").exists()


# -- 8. a takeaway reads the baseline before measuring --------------------------------------
def test_a_takeaway_reads_a_corrupt_baseline_before_measuring(tmp_path, monkeypatch):
    from quantperf import scheduler

    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "cpu-test.json").write_text(json.dumps(
        {"schema": 2, "profile": "cpu-test", "configs": {}, "takeaways": {"x": {"verdict": 3}}}))
    measured = []
    monkeypatch.setattr(scheduler, "measure_many", lambda specs, **kw: measured.append(specs) or [])
    session = _session(tmp_path, claims=[_claim(tmp_path)])
    with pytest.raises(Exception, match="cpu-test.json") as info:
        session.check_claim(_claim(tmp_path), W7)
    assert type(info.value).__name__ == "BaselineError"
    assert measured == []


def _corrupt_baseline_and_no_measuring(tmp_path, monkeypatch) -> list:
    from quantperf import scheduler

    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "cpu-test.json").write_text('{"schema": 2, "profile": "cpu-test", "configs": []}')
    measured = []
    monkeypatch.setattr(scheduler, "measure_many", lambda specs, **kw: measured.append(specs) or [])
    monkeypatch.setattr(scheduler, "measure_quality", lambda specs, **kw: measured.append(specs) or [])
    return measured


@pytest.mark.parametrize("record", [False, True])
def test_speed_memory_and_quality_read_a_corrupt_baseline_before_measuring(tmp_path, monkeypatch, record):
    from quantperf.errors import BaselineError

    measured = _corrupt_baseline_and_no_measuring(tmp_path, monkeypatch)
    session = _session(tmp_path, record=record)
    for check in (lambda: session.check(FP16, ("speed",)), lambda: session.check(FP16, ("memory",)),
                  lambda: session.check_quality(INT8)):
        with pytest.raises(BaselineError, match="cpu-test.json: configs"):
            check()
    assert measured == []


# -- nothing is downloaded at run time ----------------------------------------------------------
def test_the_default_models_and_corpus_need_no_network(monkeypatch, model_cache):
    """The synthetic shapes are built here and the fixture model and corpus ship in the package:
    with every socket connection refused they load and measure."""
    import socket

    from quantperf import corpus, measure_many, models

    def refused(*args, **kwargs):
        raise OSError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    assert corpus.load_text()
    assert models.resolve("fixture") is not None
    tiny = Workload(batch_size=1, prompt_tokens=4, new_tokens=2, warmup_rounds=0, rounds=1)
    res = measure_many([RunSpec("synthetic:llama-tiny", "torch-fp32", "cpu", "eager", tiny)], isolation="inprocess",
                       profile="cpu-test")[0]
    assert res.ok, res.reason


# -- 12. quality on a profile without a baseline ------------------------------------------------
def _quality(monkeypatch, kld: float):
    from quantperf import scheduler

    def fake(specs, **kw):
        stats = {"ln_ppl_ratio": math.log(1.001), "mean_kld": kld, "top1_agreement": 0.99,
                 "reference_backend": "torch-fp32"}
        return [RunResult(spec=s, status=Status.OK, quality=dict(stats)) for s in specs]

    monkeypatch.setattr(scheduler, "measure_quality", fake)


def test_quality_without_a_baseline_still_checks_the_class_limits(tmp_path, monkeypatch):
    _quality(monkeypatch, kld=0.5)  # far beyond the 8-bit limit
    with pytest.raises(Fail, match="QUALITY fake-int8 on cpu: mean KLD"):
        _session(tmp_path).check_quality(INT8)


def test_quality_within_limits_without_a_baseline_passes_with_a_note(tmp_path, monkeypatch):
    _quality(monkeypatch, kld=0.0001)
    with pytest.raises(Warn, match="no baseline: limits checked, regression against a baseline not"):
        _session(tmp_path).check_quality(INT8)
    # --qp-strict: a missing baseline fails, as for the speed tests
    with pytest.raises(Fail, match="no baseline for quality-small-fake-int8"):
        _session(tmp_path, strict=True).check_quality(INT8)


# -- trackers: QUANTPERF_INJECT_DELAY_MS ------------------------------------------------------
@pytest.mark.parametrize("raw", ["fake-fp16=abc", "fake-fp16=-3", "fake-fp16=nan", "fake-fp16"])
def test_a_bad_injected_delay_is_one_config_error_line(raw, monkeypatch):
    from quantperf import trackers

    monkeypatch.setenv("QUANTPERF_INJECT_DELAY_MS", raw)
    with pytest.raises(ConfigError) as info:
        trackers.injected_delay_ms("fake-fp16")
    message = str(info.value)
    assert "QUANTPERF_INJECT_DELAY_MS" in message and repr(raw) in message and "BACKEND=MS[,BACKEND=MS]" in message
    assert "non-negative" in message and "\n" not in message


def test_a_good_injected_delay_is_read(monkeypatch):
    from quantperf import trackers

    monkeypatch.setenv("QUANTPERF_INJECT_DELAY_MS", "fake-fp16=3, fake-int8=0.5")
    assert trackers.injected_delay_ms("fake-int8") == 0.5 and trackers.injected_delay_ms("torch-fp16") == 0.0


# -- the plugin, end to end with pytester ---------------------------------------------------------
MATRIX = """
[tier.cpu]
device = "cpu"
models = ["fake:small"]
backends = ["fake-fp16", "fake-int8"]
modes = ["eager"]
workload = { batch_size = 1, prompt_tokens = 8, new_tokens = 12, warmup_rounds = 1, rounds = 5 }
"""
# the shipped benchmark file uses no Hypothesis: its plugin stays out of the inner sessions (a second of imports each)
ARGS = ["--qp-matrix=matrix.toml", "--qp-baselines=baselines", "--qp-profile=cpu-test",
        "--qp-results=out/results.jsonl", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", "-p",
        "no:hypothesispytest"]


@pytest.fixture
def project(pytester, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("QUANTPERF_TEST_BACKENDS", "1")
    monkeypatch.delenv("QUANTPERF_INJECT_DELAY_MS", raising=False)
    pytester.makefile(".toml", matrix=MATRIX)
    pytester.mkdir("baselines")
    shipped = Path(__file__).resolve().parents[1] / "benchmarks" / "test_regression.py"
    pytester.makepyfile(test_bench=shipped.read_text())
    return pytester


@pytest.mark.parametrize("value", ["cpu=foo,cuda", "cpu=", "gpu=foo"])
def test_a_malformed_profile_option_is_one_usage_line(project, value):
    args = [a for a in ARGS if not a.startswith("--qp-profile")]
    result = project.runpytest_subprocess(*args, f"--qp-profile={value}", "-k", "speed")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "--qp-profile" in err and "DEVICE=PROFILE[,DEVICE=PROFILE]" in err and "Traceback" not in err, err


def test_an_unknown_synthetic_shape_is_one_usage_line(project):
    result = project.runpytest_subprocess(*ARGS, "--qp-models=synthetic:nope", "-k", "speed")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "--qp-models" in err and "unknown synthetic shape 'nope'" in err and "llama-tiny" in err, err


def test_a_summary_that_cannot_be_written_is_one_line_and_a_failing_exit(project):
    project.mkdir("out")
    project.mkdir("out/summary.json")  # a directory where the summary file goes: the write fails
    result = project.runpytest_subprocess(*ARGS, "-k", "speed")
    out = result.stdout.str() + result.stderr.str()
    assert "cannot write the file" in out and "summary.json" in out, out
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    assert result.ret not in (0, pytest.ExitCode.NO_TESTS_COLLECTED)

"""`pytest benchmarks --qp-against SPEC` (quantperf/experiments/against.py, wired by quantperf/plugin_ab.py):
the SPEC parser, the A/B decisions it adds to the gate, the order of an A/B session, and the shipped
benchmark file run through pytester, offline, on the `fake-lib` test double of tests/test_upgrade.py
(per token it calls `qp_slowlib.work(2 ms)`): this environment has qp_slowlib 2.0, A pins qp_slowlib 1.0,
both local wheels. Here `work` spends 2 ms in 1.0 and 12 ms in 2.0 (a known factor of 6) on the fake
backends' simulated clock (quantperf/backends/fake.py), so the figures do not depend on what else the
machine runs."""

import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from offline import isolate_installers
from test_upgrade_env import build_wheel

from quantperf.errors import ConfigError
from quantperf.experiments.against import EXIT_SIDE_FAILED, parse_against
from quantperf.experiments.environments import build_overlay
from quantperf.gate import ab_test_status, memory_verdict
from quantperf.plugin_ab import _rank
from quantperf.status import Status

pytest_plugins = ["pytester"]

MATRIX = """
[tier.cpu]
device = "cpu"
models = ["fake:small"]
backends = ["fake-lib", "fake-int8"]
modes = ["eager"]
workload = { batch_size = 1, prompt_tokens = 8, new_tokens = 12, warmup_rounds = 1, rounds = 3 }
"""
# fake-int8 spends 3 ms per token: the claim holds with qp_slowlib 1.0 (fake-lib 2 ms per token) and is
# flipped by 2.0 (12 ms per token)
CLAIMS = """
[[claim]]
id = "fake-lib-faster-than-int8"
sentence = "fake-lib decodes faster than fake-int8."
metric = "decode_tokens_per_s"
relation = "higher"
device = "cpu"
a = { model = "fake:small", backend = "fake-int8" }
b = { model = "fake:small", backend = "fake-lib" }
"""
ROOT = Path(__file__).resolve().parents[1]  # this checkout: pytester's pytest and its workers import its quantperf
SHIPPED_TESTS = (ROOT / "benchmarks" / "test_regression.py").read_text()
# the shipped benchmark file uses no Hypothesis: its plugin stays out of the inner sessions (a second of imports each)
ARGS = ["--qp-matrix=matrix.toml", "--qp-takeaways=takeaways.toml", "--qp-baselines=baselines",
        "--qp-profile=cpu-test", "--qp-results=out/results.jsonl", "-p", "no:cacheprovider", "-W",
        "ignore::DeprecationWarning", "--qp-ab-pairs=3", "--qp-ab-blocks=2", "-p", "no:hypothesispytest"]
SPENDLIB = """__version__ = {version!r}
from quantperf.backends.fake import spend
FACTOR = {factor!r}

def work(ms):
    spend(ms * FACTOR)
"""
FACTORS = {"1.0": 1.0, "2.0": 6.0}  # 2 ms and 12 ms per token
LIB, INT8 = "small-fake-lib-cpu-bs1-p8-n12-eager", "small-fake-int8-cpu-bs1-p8-n12-eager"


# -- SPEC ------------------------------------------------------------------------------------------

def test_pins_parse_several_in_one_argument():
    got = parse_against("qp_slowlib==1.0  other-lib==2.3")
    assert (got.form, got.pins, got.python) == ("pins", ["qp_slowlib==1.0", "other-lib==2.3"], None)
    for bad, why in (("not a spec!!", "has no version"), ("qp_slowlib>=1.0", "one exact version"),
                     ("", "empty SPEC"), ("a==1 a==2", "named twice")):
        with pytest.raises(ConfigError, match=why) as err:
            parse_against(bad)
        assert "\n" not in str(err.value)


def test_a_lock_file_gives_the_pins_that_differ_from_this_environment(tmp_path):
    from importlib.metadata import version

    lock = tmp_path / "base-lock.txt"
    lock.write_text(f"# the base branch's lock\npytest=={version('pytest')}\npackaging==0.1\n"
                    "no-such-package-qp==1.0\nquantperf==0.0.1\nnumpy>=1\n")
    got = parse_against(str(lock))
    assert (got.form, got.pins) == ("file", ["packaging==0.1"])
    assert "no-such-package-qp" in got.notes[0]
    lock.write_text(f"pytest=={version('pytest')}\n")
    with pytest.raises(ConfigError, match="SPEC names no package that differs from this environment"):
        parse_against(str(lock))


def test_an_interpreter_is_side_a(tmp_path):
    got = parse_against(f"python:{sys.executable}")
    assert (got.form, got.python, got.pins) == ("python", str(Path(sys.executable).absolute()), [])
    assert parse_against(sys.executable).form == "python"  # an executable binary, not a text file
    script = tmp_path / "py"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    script.chmod(0o755)
    assert parse_against(str(script)).python == str(script)
    with pytest.raises(ConfigError, match="no executable interpreter"):
        parse_against(f"python:{tmp_path / 'nothing'}")


def test_sides_either_way_round():
    """upgrade-check keeps A here and B in the overlay; --qp-against puts A in the overlay (or another
    interpreter) and B here; the ratio is B/A either way."""
    from quantperf.experiments.upgrade import Sides

    up = Sides(python_b="/py", env_b={"PYTHONPATH": "/ov"})
    assert up.kwargs("A") == {} and up.kwargs("B") == {"python": "/py", "env": {"PYTHONPATH": "/ov"}}
    ab = Sides(python_a="/py", env_a={"PYTHONPATH": "/ov"})
    assert ab.kwargs("A") == {"python": "/py", "env": {"PYTHONPATH": "/ov"}} and ab.kwargs("B") == {}
    assert Sides(python_a="/other/python").kwargs("A") == {"python": "/other/python", "env": None}


# -- decisions and order ---------------------------------------------------------------------------

def test_memory_verdicts_and_test_outcomes():
    assert memory_verdict([100.0] * 3, [120.0] * 3, 0.05, 0.95)[0] == Status.REGRESSED  # the weights grew
    assert memory_verdict([100.0] * 3, [80.0] * 3, 0.05, 0.95)[0] == Status.IMPROVED
    assert memory_verdict([100.0, 101, 99], [100.0, 100.5, 99.5], 0.05, 0.95)[0] == Status.OK
    assert memory_verdict([0.0] * 3, [0.0] * 3, 0.05, 0.95)[0] == Status.OK
    assert ab_test_status(Status.BEYOND_LIMITS) == Status.REGRESSED
    assert [ab_test_status(v) for v in (Status.CHANGED, Status.IDENTICAL, Status.FLIPPED)] == [
        Status.OK, Status.OK, Status.FLIPPED]


def test_items_are_ordered_kernel_graph_eager_memory_quality_takeaway():
    def item(name, mode=None, param="qp_config"):
        return SimpleNamespace(originalname=name, name=name, callspec=SimpleNamespace(
            params={param: SimpleNamespace(mode=mode)}))

    items = [item("test_takeaway", param="qp_claim"), item("test_memory", "kernel"), item("test_speed", "eager"),
             item("test_quality", param="qp_quality_config"), item("test_speed", "kernel"),
             SimpleNamespace(name="test_other"), item("test_speed", "graph")]
    got = [(i.name, getattr(getattr(i, "callspec", None), "params", {}).get("qp_config")) for i in
           sorted(items, key=_rank)]
    assert [(n, getattr(c, "mode", None)) for n, c in got] == [
        ("test_speed", "kernel"), ("test_speed", "graph"), ("test_speed", "eager"), ("test_memory", "kernel"),
        ("test_quality", None), ("test_takeaway", None), ("test_other", None)]


def test_the_planned_configurations_leave_out_tests_marked_to_skip(monkeypatch):
    """What an A/B session plans (kernel batches, quality pairs started ahead) comes from the tests
    that will run: a gpu test marked to skip on a host without a GPU plans nothing; a quality claim
    is not planned (not compared under --qp-against); under an xdist worker nothing is."""
    from quantperf.plugin_ab import _planned
    from quantperf.spec import RunSpec

    def item(name, param, value, skip=False):
        return SimpleNamespace(originalname=name, name=name, callspec=SimpleNamespace(params={param: value}),
                               get_closest_marker=lambda m: object() if (skip and m == "skip") else None)

    k, g, q, qg = (RunSpec("synthetic:llama-tiny", "torch-fp32", "cpu", "kernel"),
                   RunSpec("synthetic:llama-1b", "torch-fp16", "cuda", "kernel"),
                   RunSpec("fixture", "torch-bf16", "cpu"), RunSpec("fixture", "torch-bf16", "cuda"))
    speed_claim, quality_claim = SimpleNamespace(metric="decode_tokens_per_s"), SimpleNamespace(metric="mean_kld")
    items = [item("test_speed", "qp_config", k), item("test_speed", "qp_config", g, skip=True),
             item("test_memory", "qp_config", k), item("test_quality", "qp_quality_config", q),
             item("test_quality", "qp_quality_config", qg, skip=True),
             item("test_takeaway", "qp_claim", (speed_claim, None)),
             item("test_takeaway", "qp_claim", (quality_claim, None)),
             item("test_repeatability", "qp_config", k)]
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert _planned(items) == ([k], [(speed_claim, None)], [q])
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert _planned(items) == ([], [], [])


def test_a_configuration_on_pairs_of_its_own_starts_the_next_ones_first_pair(monkeypatch):
    """AgainstSession._chain: the Ahead of the planned configuration whose check comes next (those
    checked already or known unavailable start nothing, so they are passed over), where it is checked
    on pairs of its own on the same device; handed to its check. A known-unavailable configuration's
    check leaves it waiting; a pair started before the sides' environment changed is closed; off
    without overlap."""
    import quantperf.starting as starting
    from quantperf.experiments import ahead as ahead_module
    from quantperf.experiments.against import Against, AgainstSession
    from quantperf.experiments.upgrade import Sides
    from quantperf.spec import RunSpec

    closed = []
    monkeypatch.setattr(ahead_module.Ahead, "close", lambda self: closed.append(self.spec.id))
    monkeypatch.setattr(ahead_module, "overlap_default", lambda device: True)
    monkeypatch.setattr(starting, "_UNAVAILABLE", {})
    k, k2, g, u, e, c = (RunSpec("synthetic:llama-tiny", "torch-fp32", "cpu", "kernel"),
                         RunSpec("synthetic:llama-tiny", "torch-bf16", "cpu", "kernel"),
                         RunSpec("synthetic:llama-tiny", "torch-fp32", "cpu", "graph"),
                         RunSpec("synthetic:llama-tiny", "ort-fp32", "cpu", "eager"),
                         RunSpec("synthetic:llama-tiny", "torch-bf16", "cpu", "eager"),
                         RunSpec("synthetic:llama-tiny", "torch-bf16", "cuda", "eager"))
    starting.remember_unavailable(u, None, None, "no such provider", {})
    session = AgainstSession(Against("qp_slowlib==1.0", "pins", pins=["qp_slowlib==1.0"]),
                             profiles={"cpu": "cpu-test"}, planned=[k, k2, g, u, e, c])
    session.sides = Sides()
    batch = session._chain(k, [k, k2])  # a shared batch (check_shared) starts the next one's first pair too
    assert list(batch) == ["then"] and batch["then"].spec == g
    chained = session._chain(g, [g])
    assert chained["ahead"] is batch["then"] and chained["then"].spec == e  # u is known unavailable
    assert session._chain(u, [u]) == {} and closed == []  # u's check starts nothing: e's pair waits for e
    assert session._chain(e, [e]) == {"ahead": chained["then"], "then": None}  # c: another device
    session._chain(g, [g])
    session.sides = Sides(env_a={"QP_SIDE": "changed"})
    assert session._chain(e, [e])["ahead"] is None and closed == [e.id]
    session.planned = [g, k2]
    assert session._chain(g, [g])["then"] is None  # the next check is a shared batch's
    session.planned = [e, g]
    assert session._chain(e, [e])["then"].spec == g
    starting.remember_unavailable(k, None, None, "no such provider", {})
    closed.clear()
    assert session._chain(k, [k, k2])["then"] is None and closed == [g.id]  # a batch times: nothing beside it
    monkeypatch.setattr(ahead_module, "overlap_default", lambda device: False)
    assert session._chain(g, [g]) == {} and session._next is None


def _session(monkeypatch, tmp_path):
    """A SuiteSession whose A/B session counts side A as built (no overlay, nothing measured)."""
    from quantperf.experiments.against import Against, AgainstSession
    from quantperf.experiments.upgrade import Sides
    from quantperf.suite import SuiteSession

    suite = SuiteSession(baselines_dir=tmp_path / "baselines", profiles={"cpu": "cpu-test"})
    suite.against = AgainstSession(Against("qp_slowlib==1.0", "pins", pins=["qp_slowlib==1.0"]),
                                   profiles={"cpu": "cpu-test"})
    suite.against.sides = Sides()
    return suite


def test_quality_beyond_limits_fails_and_a_change_within_limits_passes(monkeypatch, tmp_path):
    from quantperf.experiments import quality_ab
    from quantperf.spec import RunSpec
    from quantperf.suite import Fail

    suite = _session(monkeypatch, tmp_path)
    stats = {"mean_kld": 0.004, "top1_agreement": 0.97, "ln_ppl_ratio": 0.01}
    rows = iter([{"status": "ok", "stats": stats, "verdict": Status.BEYOND_LIMITS,
                  "violations": ["mean KLD 0.00400 > 0.002"]},
                 {"status": "ok", "stats": stats | {"mean_kld": 3e-4}, "verdict": Status.CHANGED, "violations": []}])
    monkeypatch.setattr(quality_ab, "quality_check", lambda *a, **k: next(rows))
    with pytest.raises(Fail, match=r"QUALITY quality-fixture-bnb-int8-cpu.*beyond-limits.*mean KLD 0\.00400 > 0\.002"):
        suite.check_quality(RunSpec("fixture", "bnb-int8", "cpu"))
    assert suite.check_quality(RunSpec("fixture", "torch-fp32", "cpu")).status == Status.OK
    assert suite.against.counts()["regressed"] == 1 and suite.against.counts()["same"] == 1
    assert [q["verdict"] for q in suite.against.report().quality] == [Status.BEYOND_LIMITS, Status.CHANGED]


def test_a_side_that_crashes_is_one_line_and_its_own_exit_code_unless_something_regressed(monkeypatch, tmp_path):
    from quantperf.experiments import upgrade
    from quantperf.experiments.upgrade import ConfigCheck
    from quantperf.spec import RunSpec
    from quantperf.suite import Fail

    suite = _session(monkeypatch, tmp_path)
    crash = "small-fake-lib-cpu-bs1-eager: side A (qp_slowlib 1.0): crashed during pair 2: WorkerCrashed: code 3"
    checks = {"fake-lib": ConfigCheck("lib", {"device": "cpu"}, status=Status.ERROR, message=crash),
              "fake-int8": ConfigCheck("int8", {"device": "cpu"}, verdict=Status.REGRESSED, ratio=1.5, low=1.4,
                                       high=1.6, confidence=0.95, tolerance=0.05)}
    monkeypatch.setattr(upgrade, "check_config", lambda spec, *a, **k: (checks[spec.backend], {}))
    with pytest.raises(Fail) as err:
        suite.check(RunSpec("fake:small", "fake-lib", "cpu"), ("speed",))
    assert str(err.value) == crash
    ab = suite.against
    assert ab.exit_status(1, tests_failed=1) == EXIT_SIDE_FAILED
    assert ab.exit_status(1, tests_failed=2) == 1  # another test failed for its own reason
    with pytest.raises(Fail, match=r"REGRESSED small-fake-int8-cpu-bs1-eager: per-token time B/A x1\.500 \[1\.4"):
        suite.check(RunSpec("fake:small", "fake-int8", "cpu"), ("speed",))
    assert ab.exit_status(1, tests_failed=2) == 1  # a regression keeps pytest's 1
    assert ab.report().errors == [crash]


# -- end to end through pytester ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    d = tmp_path_factory.mktemp("slowlib-wheels")
    for version, factor in FACTORS.items():
        build_wheel(d, "qp_slowlib", version, SPENDLIB.format(version=version, factor=factor))
    return d


@pytest.fixture(scope="module")
def slow_here(wheels, tmp_path_factory):
    """This environment's qp_slowlib: 2.0, the slow one (an overlay put on PYTHONPATH for pytester)."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_installers(mp)
        ov = build_overlay(["qp_slowlib==2.0"], find_links=[wheels], no_index=True,
                           workdir=tmp_path_factory.mktemp("here"), installer="pip")
    yield ov
    ov.cleanup()


@pytest.fixture
def project(pytester, monkeypatch, slow_here):
    isolate_installers(monkeypatch)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(slow_here.path), str(ROOT)]))
    monkeypatch.setenv("QUANTPERF_TEST_BACKENDS", "1")
    monkeypatch.setenv("COLUMNS", "2000")  # the short test summary keeps each failure's whole line
    monkeypatch.delenv("QUANTPERF_INJECT_DELAY_MS", raising=False)
    pytester.makefile(".toml", matrix=MATRIX, takeaways=CLAIMS)
    pytester.mkdir("baselines")
    pytester.makepyfile(test_bench=SHIPPED_TESTS)
    return pytester


def run(p, *extra):
    return p.runpytest_subprocess(*ARGS, *extra, timeout=540)


def _outcome_lines(result) -> str:
    return "\n".join(result.outlines + result.errlines)


def test_the_slower_configuration_fails_at_its_factor_and_the_claim_flips(project, wheels):
    result = run(project, "--qp-against", "qp_slowlib==1.0", f"--qp-against-find-links={wheels}",
                 "--qp-against-no-index", "--qp-report", "rep", "-k", "speed or memory or takeaway", "-rfEw")
    out = _outcome_lines(result)
    assert result.ret == 1, out
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 2 and outcomes.get("passed") == 3, out  # lib speed + the claim
    m = re.search(rf"FAILED test_bench.py::test_speed\[{LIB}\] - (?:Failed: )?REGRESSED {LIB}: per-token time B/A "
                  r"x(\d\.\d+) \[(\d\.\d+), (\d\.\d+)\] \(95\.0% interval over 3 process pairs\), tolerance 5\.0%"
                  r" \| A: qp_slowlib 1\.0 \| B: qp_slowlib 2\.0 \(this environment\)", out)
    assert m, out
    ratio, low, high = map(float, m.groups())
    # the known factor is 6 (each token's time has a 1% jitter: the interval holds 6 with room to spare)
    assert ratio == pytest.approx(6.0, rel=0.02) and 1.05 < low <= 6.0 * 1.005 and high >= 6.0 / 1.005, m.group(0)
    assert f"FAILED test_bench.py::test_speed[{INT8}]" not in out
    m = re.search(r"FAILED test_bench.py::test_takeaway\[fake-lib-faster-than-int8-cpu\] - (?:Failed: )?"
                  r"FLIPPED takeaway "
                  r"fake-lib-faster-than-int8 \(> 1\): in A holds x(\d\.\d+) \[.*\]; in B flipped x(\d\.\d+) \[.*\] "
                  r"\| packages that differ: qp_slowlib A 1\.0 \| B 2\.0", out)
    assert m, out
    in_a, in_b = map(float, m.groups())
    # fake-lib / fake-int8 decode tok/s: 3/2 ms per token in A, 3/12 in B
    assert in_a == pytest.approx(1.5, rel=0.02) and in_b == pytest.approx(0.25, rel=0.02), m.group(0)
    assert re.search(r"quantperf A/B: A = qp_slowlib 1\.0 \| B = this environment: [23] same, 1 regressed, "
                     r"0 improved, [01] inconclusive, 1 takeaways flipped", out), out
    rep = json.loads(project.path.joinpath("rep", "report.json").read_text())
    assert rep["kind"] == "against" and rep["exit_code"] == 1
    assert {c["config_id"]: c["verdict"] for c in rep["configs"]}[LIB] == Status.REGRESSED
    assert {m["metric"] for m in rep["memory"]} >= {"weight_mib", "host_peak_rss_mib"}
    assert [m["verdict"] for m in rep["memory"] if m["metric"] == "weight_mib"] == [Status.OK, Status.OK]
    md = project.path.joinpath("rep", "report.md").read_text()
    assert re.search(rf"\| {LIB} \| \d\.\d+ \[\d\.\d+, \d\.\d+\] \| .* \| REGRESSED \|", md), md
    assert "A: qp_slowlib 1.0 (--qp-against) | B: qp_slowlib 2.0 (this environment)" in md
    assert "<html" in project.path.joinpath("rep", "report.html").read_text()


def test_a_a_passes(project):
    result = run(project, "--qp-against", f"python:{sys.executable}", "-k", f"test_speed and {LIB}")
    out = _outcome_lines(result)
    assert result.ret == 0, out
    assert result.parseoutcomes().get("passed") == 1, out
    assert re.search(rf"quantperf A/B: A = python {re.escape(sys.executable)} \| B = this environment: "
                     r"(1 same, 0 regressed, 0 improved, 0 inconclusive|0 same, 0 regressed, 0 improved, "
                     r"1 inconclusive), 0 takeaways flipped", out), out


def test_a_bad_spec_is_one_usage_line(project):
    result = run(project, "--qp-against", "not a spec!!")
    assert result.ret == 4
    err = [line for line in result.errlines if line.strip()]
    assert len(err) == 1 and err[0].startswith("ERROR: quantperf: --qp-against 'not a spec!!'"), err
    assert "Traceback" not in _outcome_lines(result)
    result = run(project, "--qp-against", "qp_slowlib==1.0", "--qp-record")
    assert result.ret == 4 and "reads and writes no baseline" in "\n".join(result.errlines)


def test_a_pin_no_wheel_has_fails_each_test_with_one_line_and_its_own_exit_code(project, wheels):
    result = run(project, "--qp-against", "qp_slowlib==9.9", f"--qp-against-find-links={wheels}",
                 "--qp-against-no-index", "-k", "speed or memory")
    out = _outcome_lines(result)
    assert result.ret == EXIT_SIDE_FAILED, out
    assert result.parseoutcomes().get("failed") == 4, out
    lines = [ln for ln in result.outlines if ln.startswith("FAILED")]
    assert len(lines) == 4 and all("environment A (--qp-against): cannot install qp_slowlib==9.9" in ln
                                   and "available: 1.0, 2.0" in ln for ln in lines), lines
    assert "Traceback" not in out and "4 not compared (a side failed)" in out

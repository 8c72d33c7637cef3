"""The upgrade check (quantperf/experiments/upgrade.py, decided in quantperf/gate/ab.py; `quantperf
upgrade-check` and `quantperf compare`):
the statistic as pure functions, `compare` on small results files, and upgrade-check end to end,
offline, on the `fake-lib` test double whose per-token time is spent in `qp_slowlib.work`: local
wheels of qp_slowlib 1.0 (the base), 2.0 (1.5x slower) and 3.0 (crashes mid-run). The time is the fake
backends' simulated clock (quantperf/backends/fake.py: 1% jitter per token, whatever else the machine
runs), so the decision logic sees the same noise on a busy 2-core runner as on a quiet one."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from offline import isolate_installers
from scipy.stats import t as student_t
from test_upgrade_env import build_wheel

from quantperf.errors import ConfigError
from quantperf.experiments import upgrade as upgrade_module
from quantperf.experiments.compare import ratio_interval
from quantperf.experiments.environments import build_overlay
from quantperf.experiments.upgrade import ConfigCheck, Sides, UpgradeReport, check_config, unit_times
from quantperf.gate.ab import (
    block_log_ratio,
    calibrated_tolerance,
    compare_verdict,
    decide,
    look_confidence,
    pair_interval,
    pair_mean,
    planned_looks,
    pooled_sd,
    quality_verdict,
)
from quantperf.report.upgrade import summary_line
from quantperf.results import Metric, ResultLog, RunResult
from quantperf.spec import RunSpec, Workload
from quantperf.status import Status

SLOWLIB = """__version__ = {version!r}
import os
from quantperf.backends.fake import spend
FACTOR = {factor!r}
CRASH_AFTER = {crash!r}
_calls = 0

def work(ms):
    global _calls
    _calls += 1
    if CRASH_AFTER and _calls > CRASH_AFTER:
        os.write(2, b"qp_slowlib: simulated crash\\n")
        os._exit(3)
    spend(ms * FACTOR)
"""
# 1 warm-up round + 1 block = 3 rounds x 11 decode tokens = 33 calls: 3.0 dies in the second block
VERSIONS = {"1.0": (1.0, 0), "2.0": (1.5, 0), "3.0": (1.0, 40)}
ROOT = str(Path(__file__).resolve().parents[1])
SMALL = ["--model", "fake:small", "--device", "cpu", "--prompt-tokens", "8", "--new-tokens", "12", "--warmup", "1",
         "--pairs", "3", "--blocks", "2"]


# -- the statistic ---------------------------------------------------------------------------------

def test_block_and_pair_statistic():
    assert block_log_ratio([2.0, 2.0], [3.0, 3.0]) == pytest.approx(math.log(1.5))
    assert block_log_ratio([1.0, 3.0], [2.0, 2.0]) == 0.0  # sums, not per-round ratios
    with pytest.raises(ValueError):
        block_log_ratio([1.0], [1.0, 2.0])
    assert pair_mean([0.1, 0.3]) == pytest.approx(0.2)
    est = pair_interval([0.1, 0.2, 0.3], 0.95)
    half = student_t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert (est.df, est.pairs) == (2, 3)
    assert est.ratio == pytest.approx(math.exp(0.2))
    assert (est.low, est.high) == pytest.approx((math.exp(0.2 - half), math.exp(0.2 + half)))
    with pytest.raises(ValueError):
        pair_interval([0.1], 0.95)


def test_unit_times_use_the_scenario_metrics():
    spec = RunSpec("fake:small", "fake-fp16", "cpu", "eager", Workload(batch_size=2, prompt_tokens=8, new_tokens=4))
    rounds = [{"decode_ms": [2.0, 2.0, 2.0], "prefill_ms": 5.0, "total_ms": 11.0},
              {"decode_ms": [3.0, 3.0, 3.0], "prefill_ms": 5.0, "total_ms": 14.0}]
    # decode tok/s = batch x steps / s, so 1e3 / tok/s is ms per token per sequence / batch
    assert unit_times(spec, rounds) == pytest.approx([1.0, 1.5])


@pytest.mark.parametrize("low, high, verdict", [
    (1.06, 1.2, Status.REGRESSED), (0.8, 0.94, Status.IMPROVED), (0.96, 1.04, Status.OK), (1.0, 1.06, "inconclusive"),
    (0.9, 1.1, "inconclusive"), (1 / 1.05, 1.05, Status.OK),
])
def test_decision_rule(low, high, verdict):
    assert decide(low, high, 0.05) == verdict


def test_planned_looks_and_bonferroni():
    assert planned_looks(3, 2, None) == 1
    assert planned_looks(3, 2, 6) == 1
    assert planned_looks(3, 2, 10) == 3  # two extra pairs of 2 blocks fit
    assert look_confidence(0.05, 3) == pytest.approx(1 - 0.05 / 3)
    for bad in [(2, 2, None), (3, 0, None), (3, 2, 5)]:
        with pytest.raises(ConfigError):
            planned_looks(*bad)


def test_calibration_math():
    assert calibrated_tolerance(0.05, 0.01, 3) == 0.05
    assert calibrated_tolerance(0.05, 0.03, 3) == pytest.approx(math.exp(0.09) - 1)
    assert calibrated_tolerance(0.05, None) == 0.05
    sd, df = pooled_sd([[0.0, 0.02], [0.1, 0.1, 0.1], [5.0]])
    assert df == 3 and sd == pytest.approx(math.sqrt(0.0002 / 3))


def test_quality_verdict():
    same = {"mean_kld": 2e-8, "top1_agreement": 1.0, "ln_ppl_ratio": 2e-9}  # float32 rounding of the reference
    assert quality_verdict(same, "16-bit") == ("identical", [])
    moved = {"mean_kld": 3e-4, "top1_agreement": 0.99, "ln_ppl_ratio": 1e-3}
    assert quality_verdict(moved, "16-bit") == ("changed", [])
    verdict, why = quality_verdict(moved | {"mean_kld": 0.004}, "8-bit")
    assert verdict == "beyond-limits" and why == ["mean KLD 0.00400 > 0.002"]


def _fake_pairs(monkeypatch, means):
    """check_config with _run_pair replaced: pair i gets one block of log ratio means[i]."""
    calls = []

    def fake_run_pair(spec, sides, index, blocks, *, record, keep, **kw):
        calls.append((index, record.first))
        d = means[index]
        record.blocks.append({"a": [1.0, 1.0], "b": [math.exp(d)] * 2, "log_ratio": d, "tokens_match": True})

    monkeypatch.setattr(upgrade_module, "_run_pair", fake_run_pair)
    return calls


def test_inconclusive_adds_pairs_up_to_the_planned_looks(monkeypatch):
    spec = RunSpec("fake:small", "fake-fp16", "cpu")
    calls = _fake_pairs(monkeypatch, [0.0, 0.08, -0.05, 0.01, 0.02, 0.0, 0.0])
    check, _ = check_config(spec, Sides(), pairs=3, blocks=1, max_blocks=5, tolerance=0.05)
    # 3 planned looks (3, 4, 5 pairs), each at 1 - 0.05/3; still inconclusive at the last
    assert [c[0] for c in calls] == [0, 1, 2, 3, 4] and [c[1] for c in calls] == ["A", "B", "A", "B", "A"]
    assert check.looks_planned == 3 and check.looks_used == 3 and check.verdict == "inconclusive"
    assert check.confidence == pytest.approx(1 - 0.05 / 3)
    est = pair_interval([0.0, 0.08, -0.05, 0.01, 0.02], 1 - 0.05 / 3)
    assert (check.low, check.high) == pytest.approx((est.low, est.high)) and check.tokens_match is True
    calls = _fake_pairs(monkeypatch, [0.41, 0.40, 0.42])
    check, _ = check_config(spec, Sides(), pairs=3, blocks=1, max_blocks=5, tolerance=0.05)
    assert len(calls) == 3 and check.verdict == Status.REGRESSED and check.looks_used == 1


def test_compare_interval_methods():
    welch = ratio_interval([100, 98, 102], [90, 89, 91], [], [])
    assert welch["method"].startswith("Welch") and welch["high"] < 1 and welch["note"] == ""
    one = ratio_interval([100.0], [90.0], [100, 101, 99, 100.5], [90, 91, 89, 90.5])
    assert one["method"] == "bootstrap over rounds" and "run-to-run" in one["note"]
    assert one["low"] <= 0.9 <= one["high"]
    mixed = ratio_interval([100, 98, 102], [90.0], [], [])
    assert "sd from the side with 3" in mixed["method"] and mixed["low"] < 0.9 < mixed["high"]
    assert ratio_interval([10.0], [10.0], [10.0], [10.0])["method"] == "single figures"
    assert compare_verdict(0.6, 0.7, True, 0.05) == "regressed"  # tok/s fell
    assert compare_verdict(0.6, 0.7, False, 0.05) == "improved"  # ms fell
    assert compare_verdict(0.99, 1.01, True, 0.05) == Status.OK


# -- compare ---------------------------------------------------------------------------------------

def _result(decode, weight, bnb="0.49.0", profile="cpu-test"):
    return RunResult(spec=RunSpec("synthetic:llama-1b", "bnb-int8", "cpu", "eager", Workload()), profile=profile,
                     metrics={"decode_tokens_per_s": Metric.of("decode_tokens_per_s", decode),
                              "weight_mib": Metric.of("weight_mib", [weight])},
                     backend_identity={"llm_int8_threshold": 6.0}, environment={"packages": {"bitsandbytes": bnb}},
                     timestamp="2026-11-26T00:00:00+00:00")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "quantperf", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def test_compare_two_results_files(tmp_path):
    ResultLog(tmp_path / "old.jsonl").append(_result([100, 101, 99, 100.5, 99.5], 17.8))
    ResultLog(tmp_path / "new.jsonl").append(_result([70, 71, 69, 70.5, 69.5], 17.8, bnb="0.50.0"))
    out = _cli("compare", str(tmp_path / "old.jsonl"), str(tmp_path / "new.jsonl"), "--json", str(tmp_path / "c.json"),
               "--markdown", str(tmp_path / "c.md"))
    assert out.returncode == 1, out.stderr
    assert "library versions: bitsandbytes 0.49.0 -> 0.50.0" in out.stdout
    assert ("one run per side" in out.stdout
            and "REGRESSED: llama-1b-bnb-int8-cpu-bs1-eager decode_tokens_per_s" in out.stdout)
    data = json.loads((tmp_path / "c.json").read_text())
    rows = {r["metric"]: r for r in data["rows"]}
    assert rows["decode_tokens_per_s"]["status"] == "regressed" and rows["decode_tokens_per_s"]["high"] < 0.75
    assert rows["weight_mib"]["status"] == Status.OK and rows["weight_mib"]["method"] == "single figures"
    assert (data["exit_code"] == 1
            and "| llama-1b-bnb-int8-cpu-bs1-eager | decode_tokens_per_s |" in (tmp_path / "c.md").read_text())
    # three runs per side with equal speed: Welch over run medians, no regression
    for name, medians in (("a.jsonl", (100, 98, 101)), ("b.jsonl", (99, 100, 101))):
        for m in medians:
            ResultLog(tmp_path / name).append(_result([m - 1, m, m + 1], 17.8))
    out = _cli("compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--tolerance", "speed:10%")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Welch t over run medians (3 old, 3 new runs)" in out.stdout and "no change beyond tolerance" in out.stdout


def test_compare_baseline_profile_against_results(tmp_path):
    from quantperf.baselines import BaselineStore

    store = BaselineStore(tmp_path / "bl", "cpu-test")
    for i, m in enumerate((100, 98, 101)):
        r = _result([m - 1, m, m + 1], 17.8)
        r.environment["run"] = {"run_id": f"r{i}"}
        store.update(r, None)
    store.save()
    ResultLog(tmp_path / "new.jsonl").append(_result([69, 70, 71], 17.8, bnb="0.50.0"))
    out = _cli("compare", "cpu-test", str(tmp_path / "new.jsonl"), "--baselines", str(tmp_path / "bl"))
    assert (out.returncode == 1 and "baseline cpu-test" in out.stdout
            and "sd from the side with 3" in out.stdout), out.stdout
    out = _cli("compare", "nothing-here", str(tmp_path / "new.jsonl"), "--baselines", str(tmp_path / "bl"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no baseline profile" in out.stderr


# -- upgrade-check end to end ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    d = tmp_path_factory.mktemp("slowlib-wheels")
    for version, (factor, crash) in VERSIONS.items():
        build_wheel(d, "qp_slowlib", version, SLOWLIB.format(version=version, factor=factor, crash=crash))
    return d


@pytest.fixture(scope="module")
def base(wheels, tmp_path_factory):
    """Environment A = this venv + qp_slowlib 1.0 on PYTHONPATH (child processes only), installers
    cut off from every index and config, as in test_upgrade_env."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_installers(mp)
        ov = build_overlay(["qp_slowlib==1.0"], find_links=[wheels], no_index=True,
                           workdir=tmp_path_factory.mktemp("base"), installer="pip")
        # then this checkout: the CLI and its workers import its quantperf (the fake backends' clock)
        mp.setenv("PYTHONPATH", os.pathsep.join([str(ov.path), ROOT]))
        yield ov
        ov.cleanup()


@pytest.fixture(scope="module")
def aa_run(base, tmp_path_factory):
    d = tmp_path_factory.mktemp("aa")
    out = _cli("upgrade-check", "--aa", "--backend", "fake-lib", *SMALL, "--calibration", str(d / "cal.json"),
               "--json", str(d / "aa.json"), cwd=d)
    return out, d


def test_aa_calibration_reports_no_change_and_stores_the_spread(aa_run):
    out, d = aa_run
    assert out.returncode == 0, out.stdout + out.stderr
    assert "A/A calibration: B is the same environment as A" in out.stderr
    rep = json.loads((d / "aa.json").read_text())
    [c] = rep["configs"]
    assert c["status"] == "ok" and c["verdict"] in (Status.OK, "inconclusive"), c
    # a 95% A/A interval misses 1 one time in twenty by design: the ratio is near 1, not the interval around it
    assert 0.98 < c["ratio"] < 1.02 and c["high"] / c["low"] < 1.05 and c["tokens_match"] is True
    cal = json.loads((d / "cal.json").read_text())
    assert cal["kind"] == "quantperf-upgrade-calibration" and cal["profile"] == rep["profile"]
    assert 0 <= cal["modes"]["eager"]["spread"] < 0.05 and cal["modes"]["eager"]["df"] == 2
    assert f"A/A calibration stored in {d / 'cal.json'}" in out.stderr


CLAIMS = """
[[claim]]
id = "fake-lib-as-fast-as-fp16"
sentence = "fake-lib decodes as fast as fake-fp16 (both 2 ms/token with qp_slowlib 1.0)."
metric = "decode_tokens_per_s"
relation = "within"
within = 0.1
device = "cpu"
a = { model = "fake:small", backend = "fake-fp16" }
b = { model = "fake:small", backend = "fake-lib" }
"""


def test_upgrade_flags_exactly_the_slower_backend(base, wheels, aa_run, tmp_path):
    cal = aa_run[1] / "cal.json"
    (tmp_path / "claims.toml").write_text(CLAIMS)
    out = _cli("upgrade-check", "qp_slowlib==2.0", "--find-links", str(wheels), "--no-index",
               "--backend", "fake-lib", "fake-fp16", *SMALL, "--max-blocks", "10", "--calibration", str(cal),
               "--takeaways", str(tmp_path / "claims.toml"),
               "--markdown", str(tmp_path / "r.md"), "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "A: qp_slowlib 1.0 | B: qp_slowlib 2.0 (overlay)" in out.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    checks = {c["config_id"]: c for c in rep["configs"]}
    lib, fp16 = checks["small-fake-lib-cpu-bs1-p8-n12-eager"], checks["small-fake-fp16-cpu-bs1-p8-n12-eager"]
    assert lib["verdict"] == Status.REGRESSED and fp16["verdict"] == Status.OK, (lib, fp16)
    # 2.0 spins 1.5x as long per token; the fake's own per-token overhead (a clock mark, a call:
    # a few microseconds of 2-3 ms) may pull the ratio just under 1.5, hence 0.5% of slack
    assert lib["low"] <= 1.5 * 1.005 and lib["high"] >= 1.5 / 1.005 and lib["low"] > 1.0, lib
    assert lib["ratio"] == pytest.approx(1.5, rel=0.05)
    assert 0.98 < fp16["ratio"] < 1.02  # unchanged (its 95% interval may miss 1 one time in twenty)
    assert [len(p["blocks"]) for p in lib["pairs"]] == [2, 2,
                                                        2] and [p["first"] for p in lib["pairs"]] == ["A", "B", "A"]
    # the claim holds with qp_slowlib 1.0 and is flipped by 2.0
    [claim] = rep["takeaways"]
    assert (claim["A"]["verdict"], claim["B"]["verdict"], claim["status"]) == ("holds", "flipped", "flipped"), claim
    assert rep["regressions"][0].startswith("small-fake-lib-cpu-bs1-p8-n12-eager: slower x")
    assert rep["regressions"][1:] == ["takeaway fake-lib-as-fast-as-fp16: FLIPPED"] and rep["exit_code"] == 1
    assert rep["calibration"]["kind"] == "quantperf-upgrade-calibration"
    assert rep["overlay"]["versions_b"]["qp_slowlib"] == "2.0"
    assert re.search(r"REGRESSED: small-fake-lib-cpu-bs1-p8-n12-eager: slower x1\.\d{3} \[1\.\d{3}, 1\.\d{3}\]; "
                     r"takeaway fake-lib-as-fast-as-fp16: FLIPPED", out.stdout), out.stdout
    md = (tmp_path / "r.md").read_text()
    assert re.search(r"\| small-fake-lib-cpu-bs1-p8-n12-eager \| 1\.[45]\d\d \[1\.\d+, 1\.\d+\] \| .* \| REGRESSED \|",
                     md), md
    assert re.search(r"\| small-fake-fp16-cpu-bs1-p8-n12-eager \| [01]\.\d+ \[.* \| ok \|", md), md
    assert "A: qp_slowlib 1.0 | B: qp_slowlib 2.0" in md and "A/A calibration used" in md


def test_missing_version_is_one_line_and_writes_nothing(base, wheels, tmp_path):
    out = _cli("upgrade-check", "qp_slowlib==9.9", "--find-links", str(wheels), "--no-index", "--backend", "fake-lib",
               *SMALL, "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("quantperf: ") and "building" not in line]
    assert len(errors) == 1 and "qp_slowlib==9.9" in errors[0] and "available: 1.0, 2.0, 3.0" in errors[0], out.stderr
    assert not (tmp_path / "r.json").exists()
    bad = _cli("upgrade-check", "qp_slowlib=2.0", "--backend", "fake-lib", *SMALL, cwd=tmp_path)
    assert bad.returncode == 2 and "NAME==VERSION" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


def test_side_crash_mid_run_keeps_what_was_measured(base, wheels, tmp_path):
    out = _cli("upgrade-check", "qp_slowlib==3.0", "--find-links", str(wheels), "--no-index", "--backend", "fake-lib",
               *SMALL, "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("COULD NOT RUN"))
    assert "side B (qp_slowlib 3.0): crashed during pair 1" in line and "died during 'rounds' with code 3" in line, line
    [c] = json.loads((tmp_path / "r.json").read_text())["configs"]
    assert c["status"] == "error" and c["verdict"] is None
    [pair] = c["pairs"]
    assert len(pair["blocks"]) == 1 and pair["complete"] is False  # block 1 of pair 1 is kept


def test_summary_line_names_faster_skipped_and_changed_outputs():
    """A reviewer reads one line: a 15% faster kernel must not hide behind "no change"."""
    rep = UpgradeReport(kind="upgrade", profile="p", device="cuda", overlay={}, describe="", settings={})
    rep.configs = [
        ConfigCheck("k", {"mode": "kernel"}, verdict=Status.IMPROVED, ratio=0.851, low=0.841, high=0.861),
        ConfigCheck("g", {"mode": "graph"}, status="skipped", message="not measurable"),
        ConfigCheck("e", {"mode": "eager"}, verdict="inconclusive", ratio=0.94, low=0.84, high=1.05),
    ]
    rep.quality = [{"config_id": "q", "status": "ok", "verdict": "changed"}]
    line = summary_line(rep)
    assert rep.exit_code() == 0
    assert line == ("no regression; 1 FASTER: k x0.851 [0.841, 0.861]; outputs changed within limits: q; "
                    "1 inconclusive: e; 1 skipped: g"), line
    rep.configs, rep.quality = [ConfigCheck("k", {"mode": "kernel"}, verdict=Status.OK, ratio=1.0, low=0.99,
                                            high=1.01)], []
    assert summary_line(rep) == "no change beyond tolerance"
    rep.configs[0].verdict = Status.REGRESSED
    assert summary_line(rep) == "REGRESSED: k: slower x1.000 [0.990, 1.010]" and rep.exit_code() == 1

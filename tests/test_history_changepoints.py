"""Change points over a synthetic history: E-divisive finds level shifts where they were injected,
names the package that changed there, finds none in a flat history, and the trend report marks
them in one self-contained HTML file."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from quantperf.gate.history import change_status
from quantperf.history import environment_diff, from_results, locate, log_change_points
from quantperf.history.changepoints import e_divisive
from quantperf.results import Metric, RunResult
from quantperf.spec import RunSpec, Workload
from quantperf.status import Status

WORKLOAD = Workload(batch_size=1, prompt_tokens=8, new_tokens=12, rounds=7)
BACKENDS = {"fake-fp16": 470.0, "fake-int8": 310.0, "fake-nf4": 260.0}
START = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)


def synthetic_results(n=30, shifts=None, torch_change_at=None, seed=0, noise=0.01, run_noise=0.01,
                      host="a1b2c3d4e5", mode="eager") -> list[list[RunResult]]:
    """The results of `n` nightly sittings of the fake backends on one host: each sitting's level
    off by ~`run_noise` (log sd), each round by ~`noise`, every level multiplied by shifts[i] from
    sitting i on, torch 2.11.0 -> 2.12.0 from sitting `torch_change_at`."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        factor = np.prod([f for at, f in (shifts or {}).items() if i >= at]) * np.exp(rng.normal(0, run_noise))
        when = (START + timedelta(days=i)).isoformat(timespec="seconds")
        torch = "2.12.0" if torch_change_at is not None and i >= torch_change_at else "2.11.0"
        env = {"python": "3.11.7", "packages": {"torch": torch, "numpy": "2.4.6"}, "gpu": None,
               "cpu": {"model": "AMD EPYC"},
               "run": {"run_id": f"run{i:03d}", "host": host, "boot_id": f"boot{i}", "started_at": when}}
        results = []
        for backend, level in BACKENDS.items():
            spec = RunSpec(model="fake:small", backend=backend, device="cpu", mode=mode, workload=WORKLOAD)
            decode = level * factor * np.exp(rng.normal(0, noise, 7))
            prefill = 5.0 / factor * np.exp(rng.normal(0, noise, 7))
            results.append(RunResult(spec, profile="cpu-test", backend_identity={"token_ms": 2.0},
                                     metrics={"decode_tokens_per_s": Metric.of("decode_tokens_per_s", list(decode)),
                                              "prefill_ms": Metric.of("prefill_ms", list(prefill))},
                                     environment=env, timestamp=when))
        out.append(results)
    return out


def synthetic_history(n=30, **kwargs):
    """synthetic_results as sittings, one per night (git revision rev000, rev001, ...)."""
    return [s for i, results in enumerate(synthetic_results(n, **kwargs))
            for s in from_results(results, git_revision=f"rev{i:03d}")]


CONFIG = RunSpec(model="fake:small", backend="fake-int8", device="cpu", mode="eager", workload=WORKLOAD).id


def test_level_shifts_at_sittings_10_and_20_are_found_there_and_the_one_at_20_names_torch():
    history = synthetic_history(shifts={10: 0.90, 20: 0.92}, torch_change_at=20)
    found = locate(history, CONFIG, "decode_tokens_per_s")
    assert [history.index(p.sitting) for p in found] == [10, 20]
    at10, at20 = found
    assert at20.diff.packages == {"torch": ("2.11.0", "2.12.0")}
    assert "torch 2.11.0 -> 2.12.0" in at20.diff.lines()
    assert at10.diff.packages == {}  # the shift at 10 came with no package change (only the git revision)
    assert at10.diff.git_revision == ("rev009", "rev010")
    assert at20.point.ratio == pytest.approx(0.92, rel=0.02)
    assert change_status(at20.point.before, at20.point.after, higher_is_better=True) == Status.REGRESSED
    # the prefill latency of the same configuration rose at the same sittings: worse, lower is better
    pre = locate(history, CONFIG, "prefill_ms")
    assert [history.index(p.sitting) for p in pre] == [10, 20]
    assert change_status(pre[1].point.before, pre[1].point.after, higher_is_better=False) == Status.REGRESSED


@pytest.mark.parametrize("seed", range(6))
def test_a_flat_history_has_no_change_point(seed):
    history = synthetic_history(seed=100 + seed)
    for backend in BACKENDS:
        cid = RunSpec(model="fake:small", backend=backend, device="cpu", mode="eager", workload=WORKLOAD).id
        assert locate(history, cid, "decode_tokens_per_s", seed=seed) == []


def test_the_permutation_test_is_seeded_and_respects_the_minimum_segment():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 20), rng.normal(4, 1, 20)])
    a, b = e_divisive(values, seed=7), e_divisive(values, seed=7)
    assert a == b and [c.index for c in a] == [20]
    # a shift in the last two points cannot start a segment: segments are at least three sittings
    tail = np.r_[rng.normal(0, 0.01, 10), [5.0, 5.0]]
    assert all(3 <= c.index <= len(tail) - 3 for c in e_divisive(tail, min_size=3))
    with pytest.raises(ValueError):
        log_change_points([1.0, -1.0, 2.0])


def test_an_improvement_is_named_improved_and_a_small_shift_within_tolerance_ok():
    assert change_status(100.0, 110.0, higher_is_better=True) == Status.IMPROVED
    assert change_status(100.0, 99.5, higher_is_better=True, tolerance=0.01) == Status.OK
    assert change_status(5.0, 6.0, higher_is_better=False) == Status.REGRESSED


def test_environment_diff_names_driver_gpu_and_runtime_identity():
    before, after = synthetic_history(n=2)
    after.environment = {**after.environment, "driver": "560.28", "gpu": {"name": "NVIDIA H100"}}
    after.configs[CONFIG]["runtime"] = {"cuda_graphs": True}
    d = environment_diff(before, after, CONFIG)
    assert d.driver == (None, "560.28")
    assert d.gpu == {"name": (None, "NVIDIA H100")}
    assert d.runtime == {"cuda_graphs": (None, True)}
    assert not environment_diff(before, before, CONFIG)


def test_the_trend_report_marks_the_change_points_in_one_self_contained_file():
    from quantperf.report.trends import trends_page

    history = synthetic_history(shifts={10: 0.90, 20: 0.92}, torch_change_at=20)
    page = trends_page(history, ["x.json: a corrupt sitting"])
    assert page.count("<svg") == len(BACKENDS) * 2  # one chart per configuration and metric
    assert 'class="change-point"' in page and "torch 2.11.0 -&gt; 2.12.0" in page
    assert "regressed" in page and "skipped: x.json" in page
    assert "<script" not in page and "src=\"http" not in page and "<link" not in page


def test_a_metric_that_can_be_negative_is_searched_on_its_values_and_charted():
    from quantperf.report.trends import charts, render_chart

    history = synthetic_history(n=12)
    for i, s in enumerate(history):
        s.configs[CONFIG]["metrics"]["ln_ppl_ratio"] = {"median": (-0.001 if i < 6 else 0.05) + 1e-4 * (i % 3),
                                                        "unit": "", "higher_is_better": False, "kind": "quality"}
    found = locate(history, CONFIG, "ln_ppl_ratio")
    assert [history.index(p.sitting) for p in found] == [6]
    chart = next(c for c in charts(history) if c.metric == "ln_ppl_ratio")
    assert "regressed" in render_chart(chart)  # +0.05 in a log ratio, beyond quality's 2% tolerance


def test_the_html_report_includes_the_trends_when_given_a_history():
    from quantperf.report.html import ReportData, render_html

    page = render_html(ReportData(history=synthetic_history(n=8)))
    assert '<section id="trends">' in page and page.count("<svg") == len(BACKENDS) * 2
    assert '<section id="trends">' not in render_html(ReportData())


def test_the_divergence_is_matteson_and_james_q_statistic():
    """The prefix-sum Q(tau) equals the definition, term by term (alpha = 1)."""
    from itertools import combinations

    from quantperf.history.changepoints import _q_all

    x = np.random.default_rng(4).normal(0, 1, 13)
    q = _q_all(x, 2)
    for tau in range(2, 12):
        left, right = x[:tau], x[tau:]
        m, k = len(left), len(right)
        between = 2 / (m * k) * sum(abs(a - b) for a in left for b in right)
        within_l = sum(abs(a - b) for a, b in combinations(left, 2)) / (m * (m - 1) / 2)
        within_r = sum(abs(a - b) for a, b in combinations(right, 2)) / (k * (k - 1) / 2)
        assert q[tau] == pytest.approx(m * k / (m + k) * (between - within_l - within_r))
    assert np.isneginf(q[1]) and np.isneginf(q[12])


def test_a_change_point_next_to_the_upgrade_still_names_it():
    from quantperf.report.trends import charts, render_chart

    history = synthetic_history(shifts={10: 0.90}, torch_change_at=9)  # the upgrade one sitting before the shift
    (found,) = locate(history, CONFIG, "decode_tokens_per_s")
    assert history.index(found.sitting) == 10 and not found.diff.packages
    assert [(off, d.packages) for off, d in found.nearby] == [(-1, {"torch": ("2.11.0", "2.12.0")})]
    chart = next(c for c in charts(history) if c.config == CONFIG and c.metric == "decode_tokens_per_s")
    assert "1 sitting(s) earlier: torch 2.11.0 -&gt; 2.12.0" in render_chart(chart)

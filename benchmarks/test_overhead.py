"""quantperf's own host-side overhead, timed by pytest-benchmark (pure CPU work, where its
host timer is the right clock): the gate and a takeaway's bootstrap run once per metric."""

import random

import pytest

from quantperf.gate import compare_metric
from quantperf.stats import ratio_of_medians

pytestmark = pytest.mark.cpu


def _samples(n, mean, seed):
    rng = random.Random(seed)
    return [rng.gauss(mean, mean * 0.05) for _ in range(n)]


def test_gate_overhead(benchmark):
    base, cur = _samples(15, 100.0, 1), _samples(15, 100.0, 2)
    verdict = benchmark(compare_metric, "decode_tokens_per_s", base, cur, True, 0.10)
    assert verdict.status in ("ok", "changed-insignificant")


def test_bootstrap_overhead(benchmark):
    a, b = _samples(15, 100.0, 3), _samples(15, 80.0, 4)
    est = benchmark(ratio_of_medians, a, b)
    assert est.low < 0.8 < est.high or abs(est.ratio - 0.8) < 0.1


def test_where_the_time_goes(benchmark, capsys, record_property):
    """The suite's own cost, phase by phase (quantperf.phases): the bundled fixture model in float32,
    two workloads, each measured in a fresh process on the CPU (real imports, load and warm-up);
    the breakdown is printed (also without -s) and kept in the benchmark's extra_info and the JUnit
    properties. Reported, never asserted against a time."""
    from quantperf import phases
    from quantperf.report.table import format_table
    from quantperf.scheduler import measure_many
    from quantperf.spec import RunSpec, Workload

    specs = [RunSpec("fixture", "torch-fp32", "cpu", "eager",
                     Workload(batch_size=1, prompt_tokens=32, new_tokens=n, warmup_rounds=1, rounds=3))
             for n in (8, 16)]

    def run():
        t0 = phases.clock()
        results = measure_many(specs)
        return results, phases.session_phases(results, phases.clock() - t0)

    results, ph = benchmark.pedantic(run, rounds=1, iterations=1)
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    benchmark.extra_info["phases"] = ph
    record_property("phases", ph)
    with capsys.disabled():
        print("\n" + format_table(phases.HEADER, phases.table_rows(ph["configs"])))
        print(phases.line(ph["total"], ph["wall_s"]))

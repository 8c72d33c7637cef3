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

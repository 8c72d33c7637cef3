import math

import numpy as np
import pytest

from quantperf.corpus import load_text, windows
from quantperf.divergence import Accumulator, check_finite, log_softmax
from quantperf.errors import ConfigError, NonFiniteLogits


def _logits(seed, n=64, v=50):
    return np.random.default_rng(seed).normal(size=(n, v)) * 3


def test_identical_models_agree_perfectly():
    lp = log_softmax(_logits(0))
    targets = np.random.default_rng(1).integers(0, 50, 64)
    acc = Accumulator()
    acc.add(lp, lp, targets)
    r = acc.result()
    assert r.mean_kld == pytest.approx(0, abs=1e-12) and r.top1_agreement == 1.0
    assert r.ln_ppl_ratio == 0 and r.ln_ppl_ratio_se == 0 and r.rms_dp == 0
    assert r.ppl == r.ppl_ref


def test_metrics_match_direct_formulas():
    ref, q = log_softmax(_logits(0)), log_softmax(_logits(0) + np.random.default_rng(2).normal(size=(64, 50)) * 0.3)
    t = np.random.default_rng(3).integers(0, 50, 64)
    acc = Accumulator()
    acc.add(ref[:32], q[:32], t[:32])
    acc.add(ref[32:], q[32:], t[32:])
    r = acc.result()
    rows = np.arange(64)
    nll_r, nll_q = -ref[rows, t], -q[rows, t]
    assert r.ppl_ref == pytest.approx(math.exp(nll_r.mean()))
    assert r.ln_ppl_ratio == pytest.approx(math.log(r.ppl / r.ppl_ref))
    # covariance-corrected SE: sd of the per-token difference
    assert r.ln_ppl_ratio_se == pytest.approx((nll_q - nll_r).std(ddof=1) / 8)
    kl = (np.exp(ref) * (ref - q)).sum(-1)
    assert r.mean_kld == pytest.approx(kl.mean()) and r.kld_p99 == pytest.approx(np.percentile(kl, 99))
    assert r.top1_agreement == pytest.approx((ref.argmax(-1) == q.argmax(-1)).mean())


def test_constant_nll_shift_has_zero_se():
    # a model that is uniformly worse by c nats: ratio e^c with no uncertainty
    ref = log_softmax(_logits(4))
    t = np.zeros(64, dtype=int)
    q = ref.copy()
    q[np.arange(64), t] -= 0.1
    acc = Accumulator()
    acc.add(ref, q, t)
    r = acc.result()
    assert r.ln_ppl_ratio == pytest.approx(0.1) and r.ln_ppl_ratio_se == pytest.approx(0, abs=1e-12)


def test_nan_logits_fail_loudly():
    bad = _logits(5)
    bad[3, 7] = np.nan
    with pytest.raises(NonFiniteLogits, match="1 NaN/inf"):
        check_finite(bad, "bnb-nf4 on cuda")


def test_bundled_corpus_is_clean_and_split():
    train, held = load_text("train"), load_text("heldout")
    assert "gutenberg" not in (train + held).lower()
    assert "HAMLET" in held and "HAMLET" not in train
    assert len(windows(list(range(1000)), 100)) == 9
    with pytest.raises(ConfigError, match="no such file"):
        load_text("/nonexistent/corpus.txt")


def test_quality_limits_name_what_broke():
    from quantperf.divergence import limit_violations

    good = {"ln_ppl_ratio": 0.0003, "mean_kld": 0.0001, "top1_agreement": 0.99}
    assert limit_violations("8-bit", good) == []
    bad = {"ln_ppl_ratio": math.log(1.02), "mean_kld": 0.003, "top1_agreement": 0.9}
    msgs = limit_violations("8-bit", bad)
    assert len(msgs) == 3 and msgs[0].startswith("PPL ratio 1.0200 > 1.01")
    assert limit_violations("4-bit", bad) == []  # the same figures are fine for 4-bit

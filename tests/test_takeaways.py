from pathlib import Path

import pytest

from quantperf.errors import ConfigError
from quantperf.gate import evaluate, load_claims
from quantperf.results import Metric, RunResult
from quantperf.spec import RunSpec, Workload

ROOT = Path(__file__).resolve().parent.parent
CLAIM = """
[[claim]]
id = "small-int8-slower-than-fp16"
sentence = "s"
metric = "decode_tokens_per_s"
relation = "lower"
claimed_ratio = 0.65
profiles = ["nvidia-*"]
a = { model = "synthetic:llama-125m", backend = "torch-fp16" }
b = { model = "synthetic:llama-125m", backend = "bnb-int8" }
[claim.expect]
"nvidia-h100-*" = "holds"
"""


def _claim(tmp_path, text=CLAIM):
    p = tmp_path / "t.toml"
    p.write_text(text)
    return load_claims(p)[0]


def _res(backend, samples):
    spec = RunSpec("synthetic:llama-125m", backend, "cuda", "eager", Workload())
    return RunResult(spec=spec, metrics={"decode_tokens_per_s": Metric.of("decode_tokens_per_s", samples)})


FP16 = [100, 101, 99, 100.5, 99.5, 100.2, 99.8]


def test_bundled_takeaways_parse_and_cover_the_seed_claims():
    claims = load_claims(ROOT / "baselines" / "takeaways.toml")
    ids = {c.id for c in claims}
    assert {"small-int8-slower-than-fp16", "small-int8-saves-little-memory", "ort-int8-faster-than-ort-fp32",
            "medium-int4-faster-than-fp16", "medium-int4-75pct-smaller"} <= ids
    assert any(c.metric == "ppl" for c in claims)


def test_claim_holds_when_int8_is_clearly_slower(tmp_path):
    r = evaluate(_claim(tmp_path), _res("torch-fp16", FP16), _res("bnb-int8", [x * 0.6 for x in FP16]),
                 "nvidia-tesla-t4")
    assert r.verdict == "holds" and r.passed
    assert r.high < 1.0


def test_flip_fails_with_the_ratio_its_ci_and_the_claim(tmp_path):
    r = evaluate(_claim(tmp_path), _res("torch-fp16", FP16), _res("bnb-int8", [x * 1.12 for x in FP16]),
                 "nvidia-tesla-t4",
                 expected="holds")
    assert r.verdict == "flipped" and not r.passed
    msg = r.message()
    assert msg.startswith("FLIPPED small-int8-slower-than-fp16 [nvidia-tesla-t4]: bnb-int8/torch-fp16 decode tok/s = "
                          "1.12 [")
    assert "claimed < 1" in msg


def test_overlapping_samples_are_inconclusive(tmp_path):
    r = evaluate(_claim(tmp_path), _res("torch-fp16", FP16), _res("bnb-int8", [98, 103, 97, 101, 99.5, 102, 100]),
                 "nvidia-x")
    assert r.verdict == "inconclusive"


def test_expected_verdict_is_data_per_profile(tmp_path):
    text = CLAIM.replace('"nvidia-h100-*" = "holds"', '"nvidia-h100-*" = "flipped"')
    claim = _claim(tmp_path, text)
    faster = _res("bnb-int8", [x * 1.2 for x in FP16])
    assert evaluate(claim, _res("torch-fp16", FP16), faster, "nvidia-h100-80gb-hbm3").passed
    # the verdict recorded for a profile (passed in by the suite) decides where the file says nothing
    assert not evaluate(claim, _res("torch-fp16", FP16), faster, "nvidia-tesla-t4", expected="holds").passed
    # a profile nobody recorded yet gets the verdict reported, not judged
    unknown = evaluate(claim, _res("torch-fp16", FP16), faster, "nvidia-h200")
    assert unknown.expected is None and unknown.passed and "no verdict recorded for this profile" in unknown.message()


def test_unmeasured_side_is_inconclusive_with_reason(tmp_path):
    missing = RunResult(spec=_res("bnb-int8", FP16).spec, status="unavailable", reason="bitsandbytes is not installed")
    r = evaluate(_claim(tmp_path), _res("torch-fp16", FP16), missing, "nvidia-x")
    assert r.verdict == "inconclusive" and "bitsandbytes is not installed" in r.message()


@pytest.mark.parametrize("mutation, match", [
    (('metric = "decode_tokens_per_s"', 'metric = "speed"'), "metric: unknown metric 'speed'; known: "
                                                             "decode_tokens_per_s"),
    (('relation = "lower"', 'relation = "sideways"'), "claim\\[0\\].relation: input should be 'lower', 'higher', "
                                                      "'within' or 'bounds', got 'sideways'"),
    (('relation = "lower"', 'relation = "lower"\nexpected = { "nvidia-*" = "holds" }'),
     "claim\\[0\\]: unknown key 'expected' .*allowed keys: a, b, batch_size, bounds, claimed_ratio, device, expect, "
     "id"),
    (('profiles = ["nvidia-*"]', 'profiles = "nvidia-*"'), "claim\\[0\\].profiles: input should be a valid list, got "
                                                           "'nvidia-\\*'"),
    (('id = "small-int8-slower-than-fp16"\n', ''), "claim\\[0\\].id: missing required key"),
    (('"nvidia-h100-*" = "holds"', '"nvidia-h100-*" = "maybe"'), "expect"),
    (('claimed_ratio = 0.65', 'batch_size = 0'), "claim\\[0\\].batch_size: input should be greater than or equal to 1, "
                                                 "got 0"),
])
def test_bad_claim_files_name_the_field(tmp_path, mutation, match):
    with pytest.raises(ConfigError, match=match):
        _claim(tmp_path, CLAIM.replace(*mutation))


def test_a_claim_can_set_its_own_batch_for_both_sides(tmp_path):
    """FP8 GEMMs at batch 8: both sides are measured at the claim's batch, as configurations of
    their own (bs8 in the id), while the tier's other fields (prompt, tokens, rounds) stay."""
    claim = _claim(tmp_path, CLAIM.replace("claimed_ratio = 0.65", "batch_size = 8"))
    tier = Workload(batch_size=1, prompt_tokens=128, new_tokens=64, rounds=5)
    a, b = claim.specs(tier)
    assert (a.workload.batch_size, b.workload.batch_size) == (8, 8)
    assert (a.workload.prompt_tokens, a.workload.rounds) == (128, 5)
    assert "-bs8-" in a.id and "-bs8-" in b.id
    assert _claim(tmp_path).specs(tier)[0].workload.batch_size == 1  # no batch_size: the tier's
    bundled = {c.id: c for c in load_claims(ROOT / "baselines" / "takeaways.toml")}
    fp8 = bundled["fp8-gemms-faster-than-bf16-at-prefill-bs8"]
    assert fp8.specs(tier)[1].id == "llama-8b-torchao-fp8dq-cuda-bs8-kernel"


def _kernel_res(backend, samples, method):
    spec = RunSpec("synthetic:llama-1b", backend, "cuda", "kernel", Workload())
    types = {f"decode:{t}": {"method": method} for t in ("q_proj", "down_proj")}
    return RunResult(spec=spec,
                     metrics={"kernel_decode_us_per_layer": Metric.of("kernel_decode_us_per_layer", samples)},
                     figures={"kernel": {"types": types}})


def test_kernel_claims_hold_on_time_ratios_and_never_compare_timing_methods():
    claims = {c.id: c for c in load_claims(ROOT / "baselines" / "takeaways.toml")}
    claim = claims["medium-int8-kernels-slower-than-fp16"]
    assert claim.metric == "kernel_decode_us_per_layer" and claim.a.mode == claim.b.mode == "kernel"
    fp16 = _kernel_res("torch-fp16", [50.5, 50.6, 50.4, 50.5, 50.55], "cuda-graph")
    int8 = _kernel_res("bnb-int8-nodecomp", [92.3, 92.2, 92.4, 92.3, 92.25], "cuda-graph")
    held = evaluate(claim, fp16, int8, "nvidia-h200", expected=None)
    assert held.verdict == "holds" and held.ratio == pytest.approx(92.3 / 50.5, rel=0.01)
    eager = _kernel_res("bnb-int8-nodecomp", [1288.0, 1290.0, 1285.0, 1300.0, 1280.0], "eager-timed")
    mixed = evaluate(claim, fp16, eager, "nvidia-h200", expected="holds")
    assert mixed.verdict == "inconclusive" and "timing methods differ" in mixed.message()

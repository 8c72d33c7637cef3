from pathlib import Path

import pytest

from quantperf.errors import ConfigError
from quantperf.matrix import load_matrix

ROOT = Path(__file__).resolve().parent.parent


def test_default_matrix_has_both_tiers_and_real_ids():
    tiers = load_matrix(ROOT / "benchmarks" / "matrix.toml")
    assert {t.device for t in tiers.values()} == {"cpu", "cuda"}
    gpu_ids = [c.id for c in tiers["gpu"].configs]
    assert "llama-125m-bnb-int8-cuda-bs1-eager" in gpu_ids and "llama-1b-torch-fp16-cuda-bs1-graph" in gpu_ids
    assert all(q.model == "fixture" for t in tiers.values() for q in t.quality_configs)


def test_command_line_overrides_replace_lists():
    tiers = load_matrix(ROOT / "benchmarks" / "matrix.toml",
                        {"models": "synthetic:llama-3b", "backends": "torch-fp16,bnb-nf4", "modes": "graph"})
    assert [c.id for c in tiers["gpu"].configs] == ["llama-3b-torch-fp16-cuda-bs1-graph",
                                                    "llama-3b-bnb-nf4-cuda-bs1-graph"]


@pytest.mark.parametrize("text, match", [
    ('[tier.x]\ndevice = "tpu"\n', "m.toml: tier.x.device: input should be 'cpu' or 'cuda', got 'tpu'"),
    ('[tier.x]\ndevice = "cpu"\nbackend = ["torch-fp32"]\n',
     "m.toml: tier.x: unknown key 'backend' .*; allowed keys: backends, device, extra"),
    ('[tier.x]\ndevice = "cpu"\nextra = [{ model = "m", backend = "torch-fp32", mdoe = "graph" }]\n',
     "tier.x.extra\\[0\\]: unknown key 'mdoe' \\(value 'graph'\\); allowed keys: attn_implementation, backend, "
     "hub_kernels, mode, model"),
    ('[tier.x]\ndevice = "cpu"\nmodels = "synthetic:llama-tiny"\n', "tier.x.models: input should be a valid list"),
    ('[tier.x]\ndevice = "cpu"\nbackends = ["bnb-int3"]\n', "unknown backend 'bnb-int3'"),
    ('[tier.x]\ndevice = "cpu"\nworkload = { rounds = 0 }\n', "tier.x.workload.rounds: input should be greater than or "
                                                              "equal to 1, got 0"),
    ('[tier.x]\ndevice = "cpu"\nmodes = ["turbo"]\n', "tier.x.modes: unknown mode 'turbo'; known: eager, graph"),
    ("[tier.x\n", "not valid TOML"),
    ('[tier.x]\ndevice = "cpu"\n[tier.x.noise]\ncv_within_max = { eager = "low" }\n',
     "tier.x.noise.cv_within_max.eager: input should be a valid number, got 'low'"),
    ('[tier.x]\ndevice = "cpu"\n[tier.x.noise]\nconfigs = ["nope"]\n', "names configurations not in the tier"),
    ('[tier.x]\ndevice = "cpu"\n[tier.x.noise]\nslowdowns = [5]\n', "tier.x.noise.slowdowns: must be fractions in "
                                                                    "\\(0, 0.9\\)"),
    ('[tier.x]\ndevice = "cpu"\n[tier.x.noise]\nvariants = ["turbo"]\n', "tier.x.noise.variants: .*turbo"),
    ('[tier.x]\ndevice = "cpu"\n[tier.x.noise]\ndetect = { graph = 0.2 }\n', "tier.x.noise.detect: must map modes"),
    ('[tier.x]\ndevice = "cpu"\n[tier.x.noise]\ndetect_rate = 2\n', "tier.x.noise.detect_rate: input should be less "
                                                                    "than or equal to 1, got 2"),
    ("", "no \\[tier.NAME\\] tables"),
])
def test_bad_matrix_names_file_field_and_value(tmp_path, text, match):
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_matrix(p)


def test_missing_matrix_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError, match="--qp-matrix"):
        load_matrix(tmp_path / "nope.toml")

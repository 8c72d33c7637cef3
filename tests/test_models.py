import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantperf import models
from quantperf.backends import get_backend
from quantperf.errors import ConfigError


@given(st.integers(min_value=0, max_value=10**12))
def test_size_class_partitions_parameter_counts(n):
    cls = models.size_class(n)
    assert cls == ("small" if n < 1e9 else "medium" if n < 6e9 else "large")


def test_every_linear_dimension_is_a_multiple_of_64():
    for name, shape in models.SHAPES.items():
        head_dim = shape["hidden_size"] // shape["num_attention_heads"]
        for dim in (shape["hidden_size"], shape["intermediate_size"], shape["num_key_value_heads"] * head_dim):
            assert dim % 64 == 0, (name, dim)


@pytest.mark.parametrize("shape, low, high, cls", [
    ("llama-125m", 0.1e9, 0.2e9, "small"),
    ("llama-1b", 1.0e9, 1.2e9, "medium"),  # TinyLlama-1.1B
    ("llama-3b", 3.1e9, 3.3e9, "medium"),  # Llama-3.2-3B
    ("llama-8b", 7.9e9, 8.1e9, "large"),  # Llama-3.1-8B
])
def test_shapes_have_their_real_models_parameter_counts(shape, low, high, cls):
    info = models.arch_info(models.synthetic_config(shape))
    assert low < info.parameters < high and info.size_class == cls


@pytest.mark.parametrize("ref, match", [
    ("synthetic:llama-99b", "unknown synthetic shape"),
    ("no/such/dir", "neither"),
])
def test_bad_model_references(ref, match):
    with pytest.raises(ConfigError, match=match):
        models.resolve(ref)


def _tiny_checkpoint(path, **save_kwargs):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(path, **save_kwargs)


def test_local_checkpoint_loads_through_the_real_transformers_path(tmp_path):
    _tiny_checkpoint(tmp_path / "ckpt")
    source = models.resolve(str(tmp_path / "ckpt"))
    assert source.local_files_only and not source.trust_remote_code
    assert source.load_kwargs()["use_safetensors"] is True
    loaded = get_backend("torch-fp32").load(source, "cpu")
    assert loaded.arch.num_layers == 2 and loaded.logits([1, 2, 3]).shape == (3, 512)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    _tiny_checkpoint(tmp_path / "ckpt", safe_serialization=False)
    for f in (tmp_path / "ckpt").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ConfigError, match="safetensors only"):
        models.resolve(str(tmp_path / "ckpt"))


def test_hub_ids_keep_remote_code_off_unless_asked():
    s = models.resolve("hf:org/name", local_files_only=True)
    assert s.path_or_id == "org/name" and s.local_files_only and not s.trust_remote_code
    assert models.resolve("hf:org/name", trust_remote_code=True).trust_remote_code


def test_synthetic_checkpoint_is_built_once(model_cache):
    a = models.resolve("synthetic:llama-tiny", build_device="cpu")
    stamp = (models.Path(a.path_or_id) / "model.safetensors").stat().st_mtime_ns
    b = models.resolve("synthetic:llama-tiny", build_device="cpu")
    assert a.path_or_id == b.path_or_id and (models.Path(b.path_or_id) / "model.safetensors").stat().st_mtime_ns == stamp
    assert a.meta["rng_device"] == "cpu"


def test_fixture_model_ships_with_its_training_log():
    import json

    source = models.resolve("fixture")
    log = json.loads((models.FIXTURE_DIR / "training_log.json").read_text())
    assert source.tokenizer and log["heldout_ppl_fp16_weights_fp32_compute"] < 200
    cfg = models.arch_info(source.config())
    assert 1e6 < cfg.parameters < 1e7

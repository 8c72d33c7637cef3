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
    ("llama-70b", 70.4e9, 70.7e9, "large"),  # Llama-3.1-70B
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
    assert (a.path_or_id == b.path_or_id
            and (models.Path(b.path_or_id) / "model.safetensors").stat().st_mtime_ns == stamp)
    assert a.meta["rng_device"] == "cpu"


def test_fixture_model_ships_with_its_training_log():
    import json

    source = models.resolve("fixture")
    log = json.loads((models.FIXTURE_DIR / "training_log.json").read_text())
    assert source.tokenizer and log["heldout_ppl_fp16_weights_fp32_compute"] < 200
    cfg = models.arch_info(source.config())
    assert 1e6 < cfg.parameters < 1e7


def test_a_shape_too_large_for_memory_is_built_tensor_by_tensor_into_shards(tmp_path, monkeypatch):
    """Llama-3.1-70B (141 GB in 16 bits) never fits one build device: shapes above
    STREAMED_BUILD_PARAMETERS are drawn tensor by tensor into safetensors shards with an index,
    loadable by transformers, deterministic per seed. Shown on llama-tiny with the threshold at 0."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("QUANTPERF_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "STREAMED_BUILD_PARAMETERS", 0)
    monkeypatch.setattr(models, "SHARD_BYTES", 2 * 2**20)  # 2 MiB: llama-tiny (~12 MB) takes several shards
    source = models.resolve("synthetic:llama-tiny", build_device="cpu")
    path = models.Path(source.path_or_id)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    assert source.built and len(shards) > 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert json.loads((path / "quantperf_synthetic.json").read_text())["build"].startswith("streamed")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    params = dict(model.named_parameters())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert torch.all(params["model.norm.weight"] == 1.0)
    w = params["model.layers.0.mlp.up_proj.weight"]
    assert abs(w.std().item() - model.config.initializer_range) < 0.002 and abs(w.mean().item()) < 0.001
    again = tmp_path / "again"
    monkeypatch.setenv("QUANTPERF_CACHE", str(again))
    twin = AutoModelForCausalLM.from_pretrained(models.resolve("synthetic:llama-tiny", build_device="cpu").path_or_id,
                                                dtype=torch.float32)
    assert all(torch.equal(t, dict(twin.named_parameters())[n]) for n, t in params.items())


def test_a_disk_too_small_for_a_synthetic_checkpoint_is_a_skip_with_what_it_needs(tmp_path, monkeypatch):
    import shutil

    from quantperf.errors import BackendUnavailable

    monkeypatch.setenv("QUANTPERF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100e9, 90e9, 10e9))
    with pytest.raises(BackendUnavailable, match=r"the synthetic llama-70b checkpoint needs 144 GB of free disk in .*; "
                                                 r"10 GB are free: point QUANTPERF_CACHE at a larger disk"):
        models.resolve("synthetic:llama-70b", build_device="cpu")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))

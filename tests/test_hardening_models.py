"""Hardening: a load that fails says which file, cache or model, and what to do (issue #25)."""

import time
from pathlib import Path

import pytest

from quantperf import models
from quantperf.errors import ConfigError
from quantperf.spec import RunSpec, Workload
from quantperf.workers import LocalWorker


def _load(model: str, **options) -> dict:
    worker = LocalWorker(RunSpec(model, "torch-fp32", "cpu", "eager", Workload()), options)
    try:
        return worker.load()
    finally:
        worker.close()


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache of this test's own (it corrupts what it builds)."""
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize("keep", [100_000, 4])
def test_a_truncated_cached_checkpoint_names_the_file_and_how_to_rebuild_it(own_cache, keep):
    source = models.resolve("synthetic:llama-tiny", build_device="cpu")
    weights = Path(source.path_or_id) / "model.safetensors"
    _truncate(weights, keep)
    with pytest.raises(ConfigError) as info:
        models.resolve("synthetic:llama-tiny", build_device="cpu")
    message = str(info.value)
    assert str(weights) in message and "corrupt" in message and "delete" in message
    assert models.CACHE_ENV in message and "\n" not in message
    result = _load("synthetic:llama-tiny")  # the worker's reply: the same line
    assert result["status"] == "error" and str(weights) in result["reason"] and "corrupt" in result["reason"]
    assert "\n" not in result["reason"]


def test_a_corrupt_header_in_a_local_checkpoint_names_the_file(tmp_path):
    from tests.test_models import _tiny_checkpoint

    _tiny_checkpoint(tmp_path / "ckpt")
    weights = next((tmp_path / "ckpt").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[8:20] = b"not json!!!!"
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as info:
        models.resolve(str(tmp_path / "ckpt"))
    assert str(weights) in str(info.value) and "corrupt" in str(info.value)


def test_an_unwritable_cache_names_the_directory_and_the_variable(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "cache"  # a path under a file: not writable even as root
    monkeypatch.setenv(models.CACHE_ENV, str(cache))
    with pytest.raises(ConfigError) as info:
        models.resolve("synthetic:llama-tiny", build_device="cpu")
    message = str(info.value)
    assert str(cache) in message and models.CACHE_ENV in message and "\n" not in message
    result = _load("synthetic:llama-tiny")
    assert result["status"] == "error" and models.CACHE_ENV in result["reason"] and str(cache) in result["reason"]


@pytest.mark.parametrize("how", ["local_files_only", "offline"])
def test_a_hub_model_missing_from_the_local_cache_fails_fast_naming_it(tmp_path, monkeypatch, how):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    options = {"local_files_only": True} if how == "local_files_only" else {}
    if how == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    result = _load("hf:does/not-exist", **options)
    assert time.monotonic() - t0 < 10
    reason = result["reason"]
    assert result["status"] == "error" and "hf:does/not-exist" in reason and "not in the local" in reason, reason
    assert "connect" not in reason and "\n" not in reason


def test_a_hub_model_in_the_local_cache_is_not_refused(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snap = hub / "models--org--name" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (hub / "models--org--name" / "refs").mkdir()
    (hub / "models--org--name" / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    source = models.resolve("hf:org/name", local_files_only=True)
    models.ensure_available(source)  # no error: transformers takes it from here


def test_deleting_a_corrupt_cached_weights_file_rebuilds_the_checkpoint(own_cache):
    source = models.resolve("synthetic:llama-tiny", build_device="cpu")
    weights = Path(source.path_or_id) / "model.safetensors"
    _truncate(weights, 1000)
    weights.unlink()  # what the message says to do (the file, or its directory)
    again = models.resolve("synthetic:llama-tiny", build_device="cpu")
    assert again.built and weights.is_file() and weights.stat().st_size > 1_000_000


def test_a_hub_load_failure_names_the_model():
    said = models.describe_load_error(OSError("We couldn't connect to 'https://huggingface.co'"), "hf:does/not-exist")
    assert said.startswith("model hf:does/not-exist: ") and "--local-files-only" in said and "\n" not in said
    assert models.describe_load_error(RuntimeError("shape mismatch"), "synthetic:llama-tiny") is None


def test_an_unwritable_file_under_the_cache_names_the_variable(own_cache):
    import errno

    exc = PermissionError(errno.EACCES, "Permission denied", str(own_cache / "onnx" / "x" / "model.onnx"))
    said = models.describe_load_error(exc, "synthetic:llama-tiny")
    assert str(own_cache / "onnx" / "x") in said and models.CACHE_ENV in said and "Permission denied" in said

import json

import pytest

from quantperf.baselines import BaselineStore
from quantperf.errors import BaselineError
from quantperf.results import Metric, ResultLog, RunResult, atomic_write_text
from quantperf.spec import RunSpec, Workload


def make_result(backend="torch-fp16", decode=(50.0, 51.0, 49.0), weight=100.0, identity=None):
    spec = RunSpec("synthetic:llama-1b", backend, "cuda", "eager", Workload())
    return RunResult(spec=spec, metrics={"decode_tokens_per_s": Metric.of("decode_tokens_per_s", list(decode)),
                                         "weight_mib": Metric.of("weight_mib", [weight])},
                     backend_identity=identity or {"dtype": "float16"}, environment={"packages": {"torch": "2.11.0"}},
                     timestamp="2026-11-26T00:00:00+00:00")


def test_config_id_reads_like_the_field_talks():
    assert make_result("bnb-int8").spec.id == "llama-1b-bnb-int8-cuda-bs1-eager"


def test_result_round_trips_through_json():
    r = make_result()
    back = RunResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.spec == r.spec
    assert back.metrics["decode_tokens_per_s"].samples == [50.0, 51.0, 49.0]
    assert back.metrics["decode_tokens_per_s"].value == 50.0


def test_result_log_keeps_records_after_a_torn_last_line(tmp_path):
    log = ResultLog(tmp_path / "r.jsonl")
    log.append(make_result("torch-fp16"))
    log.append(make_result("bnb-int8"))
    with open(log.path, "a") as fh:
        fh.write('{"spec": {"model": "x"')  # killed mid-write
    assert [r.spec.backend for r in log.read()] == ["torch-fp16", "bnb-int8"]


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_record_then_reload(tmp_path):
    store = BaselineStore(tmp_path, "nvidia-h100-80gb-hbm3")
    lines = store.update(make_result(), "abc123")
    store.save()
    assert any("new" in line for line in lines)
    again = BaselineStore(tmp_path, "nvidia-h100-80gb-hbm3")
    entry = again.entry("llama-1b-torch-fp16-cuda-bs1-eager")
    assert (entry["git_revision"] == "abc123"
            and entry["metrics"]["decode_tokens_per_s"]["samples"] == [50.0, 51.0, 49.0])
    text = (tmp_path / "nvidia-h100-80gb-hbm3.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # stable, diffable


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"schema": 99, "profile": "p", "configs": {}}', "field 'schema' is 99"),
    ('{"schema": 1, "profile": "nvidia-tesla-t4", "configs": {}}', "field 'profile' is 'nvidia-tesla-t4'"),
    ('{"schema": 1, "profile": "p", "configs": {"c": {"metrics": {"m": {"samples": []}}}}}',
     "configs.c.metrics.m.samples"),
])
def test_corrupt_or_mismatched_baseline_fails_loudly(tmp_path, content, match):
    (tmp_path / "p.json").write_text(content)
    with pytest.raises(BaselineError, match=match) as info:
        BaselineStore(tmp_path, "p")
    assert str(tmp_path / "p.json") in str(info.value)


def test_unsafe_profile_names_are_rejected(tmp_path):
    with pytest.raises(BaselineError):
        BaselineStore(tmp_path, "../etc/passwd")


def test_identity_change_is_a_mismatch(tmp_path):
    store = BaselineStore(tmp_path, "p")
    store.update(make_result(identity={"llm_int8_threshold": 6.0}), None)
    with pytest.raises(BaselineError, match="re-record"):
        store.check_identity(make_result(identity={"llm_int8_threshold": 0.0}))


def _with_packages(result, packages, run_id):
    result.environment = {"packages": packages, "run": {"run_id": run_id, "boot_id": "b", "host": "h"}}
    return result


def test_runs_accumulate_unless_a_shared_library_changes_version(tmp_path):
    """A library installed beside the run (onnxruntime-gpu next to a torch backend) does not start
    the record anew; another version of a library both runs had does."""
    store = BaselineStore(tmp_path, "p")
    store.update(_with_packages(make_result(), {"torch": "2.11.0"}, "r1"), None)
    store.update(_with_packages(make_result(), {"torch": "2.11.0", "onnxruntime-gpu": "1.31.1"}, "r2"), None)
    runs = store.runs("llama-1b-torch-fp16-cuda-bs1-eager", "decode_tokens_per_s")
    assert [r["run_id"] for r in runs] == ["r1", "r2"]
    store.update(_with_packages(make_result(), {"torch": "2.12.0", "onnxruntime-gpu": "1.31.1"}, "r3"), None)
    assert [r["run_id"] for r in store.runs("llama-1b-torch-fp16-cuda-bs1-eager", "decode_tokens_per_s")] == ["r3"]

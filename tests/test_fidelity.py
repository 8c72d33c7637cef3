"""What a run really ran (quantperf.fidelity): the runtime identity recorded with every result, runs
of other runtime settings never gating each other, and Hub kernels off unless a configuration asks."""

import json

import pytest

from quantperf import RunSpec, Workload, measure_many
from quantperf.baselines import BaselineStore
from quantperf.errors import ConfigError
from quantperf.results import Metric, RunResult
from quantperf.status import Status
from quantperf.suite import Fail, Skip, SuiteSession

W = Workload(batch_size=1, prompt_tokens=8, new_tokens=4, warmup_rounds=1, rounds=2)
FAKE = RunSpec("fake:small", "fake-fp16", "cpu", "eager", Workload(1, 4, 6, 0, 3))


def _runtime(**settings):
    base = {"hub_kernels": "off", "kernelized": {}, "attn_implementation": "sdpa",
            "cache_implementation": "DynamicCache", "matmul_precision": "highest", "allow_tf32_matmul": False}
    versions = settings.pop("versions", {})
    return {"settings": base | settings,
            "versions": {"torch_cuda": "12.8", "cudnn": 91002, "cublas": "12.8.4.1", "kernels": "0.19.1"} | versions}


def _result(samples, runtime, spec=FAKE):
    return RunResult(spec=spec, metrics={"decode_tokens_per_s": Metric.of("decode_tokens_per_s", samples)},
                     backend_identity={"token_ms": 2.0}, environment={"packages": {"torch": "2.13.0"}},
                     runtime=runtime, timestamp="2026-12-06T00:00:00+00:00")


def _session(tmp_path, baseline_runtime, strict=False, spec=FAKE):
    store = BaselineStore(tmp_path, "cpu-test")
    store.update(_result([100, 101, 99, 100.5, 99.5], baseline_runtime, spec), None)
    store.save()
    return SuiteSession(baselines_dir=tmp_path, profiles={"cpu": "cpu-test"}, strict=strict)


# -- recorded with every result ---------------------------------------------------------------
def test_a_real_cpu_run_records_what_ran_read_back_from_the_loaded_model(model_cache, tmp_path):
    sdpa, eager = measure_many([RunSpec("fixture", "torch-fp32", "cpu", "eager", W),
                                RunSpec("fixture", "torch-fp32", "cpu", "eager", W,
                                        (("attn_implementation", "eager"),))], profile="cpu-test")
    assert sdpa.ok and eager.ok, (sdpa.reason, eager.reason)
    s = sdpa.runtime["settings"]
    assert s["hub_kernels"] == "off" and s["kernelized"] == {}
    assert s["attn_implementation"] == "sdpa" and eager.runtime["settings"]["attn_implementation"] == "eager"
    assert s["cache_implementation"] == "DynamicCache"  # what generate built in eager mode
    import torch

    assert s["matmul_precision"] == torch.get_float32_matmul_precision()
    assert s["allow_tf32_matmul"] == torch.backends.cuda.matmul.allow_tf32
    import importlib.metadata

    assert sdpa.runtime["versions"]["kernels"] == importlib.metadata.version("kernels")
    assert sdpa.runtime["versions"]["torch_cuda"] == torch.version.cuda
    # the option is part of the configuration: its own id and identity
    assert eager.spec.id == "fixture-torch-fp32+attn-eager-cpu-bs1-p8-n4-eager" != sdpa.spec.id
    assert eager.backend_identity["attn_implementation"] == "eager"
    # through the results log, and into the baseline when recorded
    back = RunResult.from_dict(json.loads(json.dumps(sdpa.to_dict())))
    assert back.runtime == sdpa.runtime
    store = BaselineStore(tmp_path, "cpu-test")
    store.update(sdpa, None)
    store.save()
    assert BaselineStore(tmp_path, "cpu-test").runtime(sdpa.spec.id) == json.loads(json.dumps(sdpa.runtime))


def test_kernels_is_one_of_the_recorded_libraries():
    from quantperf.envinfo import LIBRARIES

    assert "kernels" in LIBRARIES


def test_old_results_and_baselines_without_a_runtime_still_load(tmp_path):
    d = _result([100.0], {}).to_dict()
    del d["runtime"]
    assert RunResult.from_dict(d).runtime == {}
    store = BaselineStore(tmp_path, "cpu-test")
    store.update(_result([100, 101, 99], {}), None)
    store.save()
    data = json.loads(store.path.read_text())
    assert all("runtime" not in c for c in data["configs"].values())
    assert BaselineStore(tmp_path, "cpu-test").runtime(FAKE.id) is None


# -- gating -----------------------------------------------------------------------------------
def test_another_attention_implementation_is_incomparable_naming_the_field(tmp_path):
    session = _session(tmp_path, _runtime(attn_implementation="sdpa"))
    outcome = session.gate_result(_result([60, 61, 59, 60.5, 59.5], _runtime(attn_implementation="eager")),
                                  ("speed",))
    assert outcome.status == Status.INCOMPARABLE
    assert "attn_implementation sdpa -> eager" in outcome.message
    assert outcome.runtime_changes == {"attn_implementation": ["sdpa", "eager"]}
    assert outcome.runtime["settings"]["attn_implementation"] == "eager"  # the summary keeps what ran
    with pytest.raises(Skip, match="attn_implementation sdpa -> eager"):
        session.raise_for(outcome)
    strict = _session(tmp_path, _runtime(attn_implementation="sdpa"), strict=True)
    with pytest.raises(Fail, match="INCOMPARABLE"):
        strict.raise_for(strict.gate_result(_result([60, 61, 59], _runtime(attn_implementation="eager")), ("speed",)))


def test_another_hub_kernels_setting_is_incomparable(tmp_path):
    session = _session(tmp_path, _runtime(hub_kernels="off"))
    now = _runtime(hub_kernels="hub", kernelized={"kernels-community/rotary": {"layers": 4, "funcs": 0,
                                                                               "revision": "v1"}})
    outcome = session.gate_result(_result([100, 101, 99, 100.5, 99.5], now), ("speed",))
    assert outcome.status == Status.INCOMPARABLE
    assert "hub_kernels off -> hub" in outcome.message and "kernelized {} -> " in outcome.message


def test_the_same_settings_gate_as_usual_and_runtime_versions_are_named_not_blocking(tmp_path):
    session = _session(tmp_path, _runtime(versions={"torch_cuda": "12.4", "cublas": "12.4.5.8"}))
    outcome = session.gate_result(_result([60, 61, 59, 60.5, 59.5], _runtime()), ("speed",))
    assert outcome.status == Status.REGRESSED  # gated: a version change is what an upgrade changes
    assert "runtime versions differ from the baseline: torch_cuda 12.4 -> 12.8, cublas 12.4.5.8 -> 12.8.4.1" \
        in outcome.message
    same = _session(tmp_path / "same", _runtime())
    assert same.gate_result(_result([100, 101, 99, 100.5, 99.5], _runtime()), ("speed",)).status == Status.OK


def test_a_baseline_recorded_before_runtime_identities_gates_as_before_with_a_note(tmp_path):
    session = _session(tmp_path, {})
    outcome = session.gate_result(_result([60, 61, 59, 60.5, 59.5], _runtime(attn_implementation="eager")),
                                  ("speed",))
    assert outcome.status == Status.REGRESSED
    assert "baseline has no runtime identity" in outcome.message


def test_a_run_of_other_runtime_settings_is_left_out_of_the_pooled_run_level_gate(tmp_path, monkeypatch):

    other = RunSpec("fake:small", "fake-int8", "cpu", "eager", FAKE.workload)
    store = BaselineStore(tmp_path, "cpu-test")
    for spec in (FAKE, other):
        store.update(_result([100, 101, 99, 100.5, 99.5], _runtime(), spec), None)
    store.save()
    seen = []
    import quantperf.gate.metric as metric  # the run-level gate (called through gate.history's host-aware one)

    real = metric.gate_runs

    def spy(current, baselines, *args):
        seen.append((set(current), set(baselines)))
        return real(current, baselines, *args)

    monkeypatch.setattr(metric, "gate_runs", spy)
    session = SuiteSession(baselines_dir=tmp_path, profiles={"cpu": "cpu-test"})
    outcomes = session.gate_speed([_result([100, 101, 99], _runtime(attn_implementation="eager")),
                                   _result([100, 101, 99], _runtime(), other)])
    assert outcomes[FAKE.id].status == Status.INCOMPARABLE
    assert "attn_implementation sdpa -> eager" in outcomes[FAKE.id].message
    assert outcomes[other.id].status != Status.INCOMPARABLE
    assert seen and all(FAKE.id not in cur and FAKE.id not in base for cur, base in seen)
    assert any(other.id in cur for cur, _ in seen)  # the other configuration is still gated


def test_incomparable_is_not_gated_and_skipped_unless_strict():
    from quantperf.gate import NOT_GATED, SKIPPED_UNLESS_STRICT, label

    assert Status.INCOMPARABLE in NOT_GATED and Status.INCOMPARABLE in SKIPPED_UNLESS_STRICT
    assert label(Status.INCOMPARABLE) == "SKIPPED"


def test_compare_marks_a_configuration_of_other_runtime_settings_incomparable(tmp_path):
    from quantperf.experiments.compare import compare
    from quantperf.report.upgrade import render_compare
    from quantperf.results import ResultLog

    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    ResultLog(old).append(_result([100, 101, 99], _runtime()))
    ResultLog(new).append(_result([100, 101, 99], _runtime(cache_implementation="StaticCache")))
    out = compare(str(old), str(new))
    assert out["rows"][0]["status"] == Status.INCOMPARABLE
    assert "cache_implementation DynamicCache -> StaticCache" in out["rows"][0]["note"]
    text = render_compare(out, markdown=True)
    assert "KV cache old" in text and "StaticCache" in text


# -- the A/B: both sides' runtime in the report --------------------------------------------------
def test_the_ab_report_names_each_sides_attention_cache_and_hub_kernels():
    from quantperf.experiments.upgrade import ConfigCheck, UpgradeReport
    from quantperf.gate import sides_note
    from quantperf.report.upgrade import render_upgrade

    a, b = _runtime(), _runtime(attn_implementation="flash_attention_2", hub_kernels="hub")
    assert sides_note(a, b) == ("the sides ran different runtime settings (A -> B): hub_kernels off -> hub, "
                                "attn_implementation sdpa -> flash_attention_2")
    assert sides_note(a, _runtime()) is None
    check = ConfigCheck(FAKE.id, FAKE.to_dict(), verdict=Status.OK, runtime={"A": a, "B": b})
    rep = UpgradeReport("upgrade", "cpu-test", "cpu", {}, "A: here\nB: there",
                        {"pairs": 3, "blocks": 2, "alpha": 0.05}, [check])
    md = render_upgrade(rep, markdown=True)
    assert "runtime: what each side ran" in md and "attention A" in md and "Hub kernels B" in md
    row = next(line for line in md.splitlines() if line.startswith("|") and "flash_attention_2" in line)
    assert "sdpa" in row and "hub (none kernelized)" in row and "DynamicCache" in row
    assert rep.to_dict()["configs"][0]["runtime"]["B"]["settings"]["attn_implementation"] == "flash_attention_2"


# -- Hub kernels off unless asked ---------------------------------------------------------------
def test_a_worker_process_runs_with_hub_kernels_off_whatever_the_parent_says(monkeypatch):
    from quantperf.workers import ProcessWorker

    monkeypatch.setenv("USE_HUB_KERNELS", "YES")
    worker = ProcessWorker(FAKE, env={"USE_HUB_KERNELS": "1"})
    try:
        assert worker.runtime()["settings"]["hub_kernels"] == "off"  # read back in the child
    finally:
        worker.close()


def test_transformers_reads_the_switch_at_call_time(monkeypatch):
    from transformers.integrations.hub_kernels import _kernels_enabled

    from quantperf.fidelity import apply_hub_kernels, load_kwargs

    monkeypatch.setenv("USE_HUB_KERNELS", "YES")
    apply_hub_kernels("off")
    assert not _kernels_enabled()
    apply_hub_kernels("hub")
    assert _kernels_enabled()
    assert load_kwargs({})["use_kernels"] is False and not _kernels_enabled()
    assert load_kwargs({"attn_implementation": "eager"})["attn_implementation"] == "eager"


def _hub(monkeypatch, **env):
    from quantperf.backends import get_backend

    for name in ("HF_HUB_OFFLINE", "LOCAL_KERNELS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return get_backend("torch-fp32", {"hub_kernels": "hub"})


def test_the_opt_in_is_unavailable_offline_with_what_it_needs(monkeypatch, model_cache):
    from quantperf.workers import LocalWorker

    backend = _hub(monkeypatch, HF_HUB_OFFLINE="1")
    reason = backend.unavailable_reason("cpu")
    assert "HF_HUB_OFFLINE is set" in reason and "LOCAL_KERNELS" in reason
    spec = RunSpec("fixture", "torch-fp32", "cpu", "eager", W, (("hub_kernels", "hub"),))
    loaded = LocalWorker(spec).load()
    assert loaded["status"] == Status.UNAVAILABLE and "LOCAL_KERNELS" in loaded["reason"]
    assert _hub(monkeypatch, HF_HUB_OFFLINE="1", LOCAL_KERNELS="/kernels").unavailable_reason("cpu") is None


def test_the_opt_in_probe_failing_or_missing_libraries_say_what_is_needed(monkeypatch):
    from quantperf import fidelity

    backend = _hub(monkeypatch)
    monkeypatch.setattr(fidelity, "hub_reachable", lambda: False)
    assert "the Hugging Face Hub did not answer" in backend.unavailable_reason("cpu")
    real = fidelity._version
    monkeypatch.setattr(fidelity, "_version", lambda n: None if n == "kernels" else real(n))
    assert "pip install kernels" in backend.unavailable_reason("cpu")
    monkeypatch.setattr(fidelity, "_version", lambda n: "4.57.1" if n == "transformers" else real(n))
    assert "needs transformers >= 5.0 (installed: 4.57.1)" in backend.unavailable_reason("cpu")
    assert fidelity.hub_kernels_reason({}) is None  # no opt-in: nothing to check


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("table, says", [
    ('{ name = "torch-fp32", hub_kernels = "maybe" }', "tier.cpu.backends[1].hub_kernels: unknown value 'maybe'; "
                                                      "allowed: off, hub"),
    ('{ name = "torch-fp32", attn_implementation = "fast" }', "tier.cpu.backends[1].attn_implementation: unknown "
                                                             "value 'fast'; allowed: eager, sdpa"),
    ('{ name = "torch-fp32", kernels = "hub" }', "unknown backend option 'kernels'"),
    ('{ name = "ort-fp32", hub_kernels = "hub" }', "ort-fp32 does not load through transformers"),
    ('{ hub_kernels = "hub" }', "a backend table needs its name"),
])
def test_a_bad_backend_option_is_one_config_error_naming_file_field_and_value(tmp_path, table, says):
    from quantperf.matrix import load_matrix

    path = tmp_path / "matrix.toml"
    path.write_text(f'[tier.cpu]\ndevice = "cpu"\nmodels = ["fixture"]\nbackends = ["torch-fp32", {table}]\n')
    with pytest.raises(ConfigError) as info:
        load_matrix(path)
    message = str(info.value)
    assert says in message and str(path) in message and "\n" not in message


def test_options_make_configurations_of_their_own_and_a_default_is_no_option(tmp_path):
    from quantperf.matrix import load_matrix

    path = tmp_path / "matrix.toml"
    path.write_text('[tier.cpu]\ndevice = "cpu"\nmodels = ["fixture"]\nbackends = ["torch-fp32", '
                    '{ name = "torch-fp32", hub_kernels = "hub" }, { name = "torch-fp32", hub_kernels = "off" }, '
                    '{ name = "torch-fp32", attn_implementation = "eager" }]\n'
                    'extra = [{ model = "fixture", backend = "torch-bf16", attn_implementation = "eager" }]\n')
    configs = load_matrix(path)["cpu"].configs
    assert [c.id for c in configs] == [
        "fixture-torch-fp32-cpu-bs1-eager", "fixture-torch-fp32+hubkernels-cpu-bs1-eager",
        "fixture-torch-fp32+attn-eager-cpu-bs1-eager", "fixture-torch-bf16+attn-eager-cpu-bs1-eager"]
    assert configs[1].backend_options == (("hub_kernels", "hub"),)


def test_an_extra_configuration_takes_the_options_too(tmp_path):
    from quantperf.matrix import load_matrix

    path = tmp_path / "matrix.toml"
    path.write_text('[tier.cpu]\ndevice = "cpu"\nmodels = ["fixture"]\n'
                    'extra = [{ model = "fixture", backend = "torch-fp32", hub_kernels = "on" }]\n')
    with pytest.raises(ConfigError, match=r"tier.cpu.extra\[0\].hub_kernels: unknown value 'on'; allowed: off, hub"):
        load_matrix(path)


def test_recording_a_run_of_other_runtime_settings_starts_the_record_anew(tmp_path):
    store = BaselineStore(tmp_path, "cpu-test")
    store.update(_result([100, 101, 99], _runtime()), None)
    store.update(_result([100, 101, 99], _runtime(versions={"torch_cuda": "12.9"})), None)
    assert len(store.runs(FAKE.id, "decode_tokens_per_s")) == 2  # a version change keeps the runs
    store.update(_result([90, 91, 89], _runtime(attn_implementation="eager")), None)
    assert [r["value"] for r in store.runs(FAKE.id, "decode_tokens_per_s")] == [90]
    assert store.runtime(FAKE.id)["settings"]["attn_implementation"] == "eager"

"""Hardening of the stores: baselines and results files under concurrent writers, torn lines,
failed writes and arbitrary contents (issue #25)."""

import errno
import json
import multiprocessing
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantperf.baselines import BaselineStore
from quantperf.errors import BaselineError, QuantperfError, ResultsError
from quantperf.results import Metric, ResultLog, RunResult, atomic_write_text
from quantperf.spec import RunSpec, Workload

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "cpu-test"


def _result(run_id: str, backend: str = "fake-fp16", value: float = 50.0) -> RunResult:
    spec = RunSpec("fake:small", backend, "cpu", "eager", Workload())
    return RunResult(spec=spec, metrics={"decode_tokens_per_s": Metric.of("decode_tokens_per_s", [value, value + 1]),
                                         "weight_mib": Metric.of("weight_mib", [10.0])},
                     backend_identity={"dtype": "float16"},
                     environment={"packages": {"torch": "2.11.0"},
                                  "run": {"run_id": run_id, "host": "h", "boot_id": "b",
                                          "started_at": "2026-12-01T00:00:00+00:00"}},
                     timestamp="2026-12-01T00:00:00+00:00")


# -- 1. concurrent recorders --------------------------------------------------------------------
def _recorder(directory: str, who: str, n: int, barrier) -> None:
    """One recording process: its store is read at start (as a pytest session's is), then it
    records `n` runs of two configurations, saving after each (as the suite does)."""
    store = BaselineStore(directory, PROFILE)
    barrier.wait()
    for i in range(n):
        for backend in ("fake-fp16", "fake-int8"):
            store.update(_result(f"{who}{i}", backend), None)
            store.save()


def test_two_concurrent_recorder_processes_lose_no_run(tmp_path):
    ctx = multiprocessing.get_context("fork")
    n = 3
    for rep in range(20):
        directory = tmp_path / f"rep{rep}"
        seed = BaselineStore(directory, PROFILE)
        for backend in ("fake-fp16", "fake-int8"):
            seed.update(_result("seed", backend), None)
        seed.save()
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_recorder, args=(str(directory), who, n, barrier)) for who in ("a", "b")]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, f"repetition {rep}: a recorder failed"
        text = (directory / f"{PROFILE}.json").read_text()
        json.loads(text)  # valid JSON
        store = BaselineStore(directory, PROFILE)  # and loadable
        want = {"seed"} | {f"{who}{i}" for who in "ab" for i in range(n)}
        for backend in ("fake-fp16", "fake-int8"):
            cid = _result("x", backend).spec.id
            for metric in ("decode_tokens_per_s", "weight_mib"):
                got = [r["run_id"] for r in store.runs(cid, metric)]
                assert sorted(got) == sorted(want), f"repetition {rep}: {cid} {metric} kept {got}"


def test_a_store_saved_twice_does_not_undo_another_process_takeaway(tmp_path):
    mine = BaselineStore(tmp_path, PROFILE)
    mine.record_takeaway("claim-a", "holds", 1.2, [1.1, 1.3], {}, "2026-12-01")
    mine.save()
    theirs = BaselineStore(tmp_path, PROFILE)
    theirs.record_takeaway("claim-a", "flipped", 0.8, [0.7, 0.9], {}, "2026-12-02")
    theirs.save()
    mine.update(_result("r1"), None)
    mine.save()  # writes its configuration; claim-a was saved already: theirs is newer
    assert BaselineStore(tmp_path, PROFILE).takeaway("claim-a")["verdict"] == "flipped"


def test_a_rerecorded_run_replaces_its_own_entry_when_merging(tmp_path):
    a = BaselineStore(tmp_path, PROFILE)
    b = BaselineStore(tmp_path, PROFILE)
    a.update(_result("r1", value=50.0), None)
    a.save()
    b.update(_result("r2", value=60.0), None)
    b.save()
    a.update(_result("r1", value=55.0), None)  # the same run re-recorded
    a.save()
    runs = BaselineStore(tmp_path, PROFILE).runs(_result("x").spec.id, "decode_tokens_per_s")
    assert sorted((r["run_id"], r["value"]) for r in runs) == [("r1", 55.5), ("r2", 60.5)]


def test_a_new_setup_still_starts_the_record_anew_when_merging(tmp_path):
    a = BaselineStore(tmp_path, PROFILE)
    b = BaselineStore(tmp_path, PROFILE)
    a.update(_result("r1"), None)
    a.save()
    new = _result("r2")
    new.environment["packages"] = {"torch": "2.12.0"}
    b.update(new, None)
    b.save()
    runs = BaselineStore(tmp_path, PROFILE).runs(new.spec.id, "decode_tokens_per_s")
    assert [r["run_id"] for r in runs] == ["r2"]


# -- 2. a torn last line ------------------------------------------------------------------------
def test_a_result_appended_after_a_torn_line_is_kept(tmp_path):
    log = ResultLog(tmp_path / "r.jsonl")
    log.append(_result("r1", "fake-fp16"))
    with open(log.path, "a") as fh:
        fh.write('{"spec": {"model": "x"')  # killed mid-write, or the disk was full
    log.append(_result("r2", "fake-int8"))
    with pytest.warns(UserWarning, match=r"r\.jsonl: line 2 .*torn"):
        results = log.read()
    assert [r.spec.backend for r in results] == ["fake-fp16", "fake-int8"]


def test_a_torn_last_line_is_skipped_with_a_warning_naming_file_and_line(tmp_path):
    log = ResultLog(tmp_path / "r.jsonl")
    log.append(_result("r1"))
    with open(log.path, "a") as fh:
        fh.write('{"spec": {"mod')
    with pytest.warns(UserWarning, match=r"r\.jsonl: line 2"):
        assert len(log.read()) == 1


def test_a_line_that_is_not_a_result_is_still_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('[1, 2]\n' + json.dumps(_result("r1").to_dict()) + "\n")
    with pytest.raises(ResultsError, match="line 1"):
        ResultLog(path).read()


# -- 5. contents below the entry ------------------------------------------------------------
def _baseline_with(tmp_path, run=None, takeaway=None) -> Path:
    store = BaselineStore(tmp_path, PROFILE)
    store.update(_result("r1"), None)
    store.record_takeaway("claim-a", "holds", 1.2, [1.1, 1.3], {}, "2026-12-01")
    store.save()
    path = tmp_path / f"{PROFILE}.json"
    data = json.loads(path.read_text())
    cid = _result("x").spec.id
    if run is not None:
        data["configs"][cid]["metrics"]["decode_tokens_per_s"]["runs"] = [run]
    if takeaway is not None:
        data["takeaways"]["claim-a"] = takeaway
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("run, match", [
    ({"run_id": "x"}, r"decode_tokens_per_s\.runs\[0\]\.value: missing required key"),
    ({"value": "fast", "run_id": "x"}, r"runs\[0\]\.value: .*'fast'"),
    ({"value": 5.0, "run_id": 7}, r"runs\[0\]\.run_id: .*7"),
    ({"value": 5.0, "started_at": "yesterday"}, r"runs\[0\]\.started_at: .*'yesterday'"),
    ({"value": 5.0, "valu": 3}, r"runs\[0\]: unknown key 'valu'"),
])
def test_a_bad_run_record_fails_the_load_naming_file_field_and_value(tmp_path, run, match):
    path = _baseline_with(tmp_path, run=run)
    with pytest.raises(BaselineError, match=match) as info:
        BaselineStore(tmp_path, PROFILE)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("takeaway, match", [
    ({"verdict": 5}, r"takeaways\.claim-a\.verdict: .*5"),
    ({"verdict": "HOLDS"}, r"takeaways\.claim-a\.verdict: .*'HOLDS'"),
    ({"ratio": 1.0}, r"takeaways\.claim-a\.verdict: missing required key"),
    ({"verdict": "holds", "ci": "wide"}, r"takeaways\.claim-a\.ci: .*'wide'"),
])
def test_a_bad_takeaway_fails_the_load_naming_file_field_and_value(tmp_path, takeaway, match):
    path = _baseline_with(tmp_path, takeaway=takeaway)
    with pytest.raises(BaselineError, match=match) as info:
        BaselineStore(tmp_path, PROFILE)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("path", sorted((ROOT / "baselines").glob("*.json")), ids=lambda p: p.name)
def test_every_committed_baseline_file_loads(path):
    store = BaselineStore(path.parent, path.stem)
    assert store.data["configs"] or store.data.get("takeaways")
    for cid, entry in store.data["configs"].items():
        for metric in entry["metrics"]:
            for run in store.runs(cid, metric):
                assert isinstance(run["value"], float)


@pytest.mark.parametrize("command", ["gate", "compare"])
def test_the_cli_gives_one_line_for_a_run_without_a_value(tmp_path, command):
    """Before: a KeyError traceback in `quantperf gate` and `compare`; now the load names the field."""
    import subprocess
    import sys

    path = _baseline_with(tmp_path, run={"run_id": "x"})
    log = ResultLog(tmp_path / "r.jsonl")
    r = _result("r9")
    r.profile = PROFILE
    log.append(r)
    args = ([str(log.path), "--baselines", str(tmp_path), "--profile", PROFILE] if command == "gate"
            else [str(path), str(log.path)])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-m", "quantperf", command, *args], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode != 0 and str(path) in out.stderr and "value: missing required key" in out.stderr


# -- 6. failed writes ---------------------------------------------------------------------------
def _raising(exc):
    def f(*args, **kwargs):
        raise exc
    return f


@pytest.mark.parametrize("exc", [PermissionError(errno.EACCES, "Permission denied"),
                                 OSError(errno.ENOSPC, "No space left on device")])
def test_atomic_write_failure_is_one_line_naming_the_path_and_leaves_no_temp_file(tmp_path, monkeypatch, exc):
    from quantperf.errors import StoreWriteError

    monkeypatch.setattr(os, "replace", _raising(exc))
    with pytest.raises(StoreWriteError) as info:
        atomic_write_text(tmp_path / "a.json", "{}")
    message = str(info.value)
    assert str(tmp_path / "a.json") in message and exc.strerror in message and "\n" not in message
    assert isinstance(info.value, QuantperfError)
    assert list(tmp_path.iterdir()) == []


def test_a_write_failing_mid_file_leaves_no_temp_file(tmp_path, monkeypatch):
    from quantperf.errors import StoreWriteError

    monkeypatch.setattr(os, "fsync", _raising(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(StoreWriteError, match="No space left on device"):
        atomic_write_text(tmp_path / "a.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_baselines_directory_under_a_file_is_one_line(tmp_path):
    from quantperf.errors import StoreWriteError

    (tmp_path / "file").write_text("")
    store = BaselineStore(tmp_path / "file" / "baselines", PROFILE)
    store.update(_result("r1"), None)
    with pytest.raises(StoreWriteError) as info:
        store.save()
    message = str(info.value)
    assert str(tmp_path / "file" / "baselines") in message and "\n" not in message


def test_baseline_save_failure_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from quantperf.errors import StoreWriteError

    store = BaselineStore(tmp_path, PROFILE)
    store.update(_result("r1"), None)
    store.save()
    before = (tmp_path / f"{PROFILE}.json").read_text()
    store.update(_result("r2"), None)
    monkeypatch.setattr(os, "replace", _raising(PermissionError(errno.EROFS, "Read-only file system")))
    with pytest.raises(StoreWriteError) as info:
        store.save()
    assert str(tmp_path / f"{PROFILE}.json") in str(info.value) and "Read-only file system" in str(info.value)
    assert (tmp_path / f"{PROFILE}.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{PROFILE}.json", f"{PROFILE}.json.lock"])


def test_a_result_log_write_failure_is_one_line(tmp_path, monkeypatch):
    from quantperf.errors import StoreWriteError

    log = ResultLog(tmp_path / "r.jsonl")
    monkeypatch.setattr(os, "fsync", _raising(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(StoreWriteError) as info:
        log.append(_result("r1"))
    assert str(log.path) in str(info.value) and "\n" not in str(info.value)


# -- property: arbitrary JSON into the loaders ------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(["schema", "profile", "configs", "metrics", "runs", "value", "samples", "median",
                        "takeaways", "verdict", "run_id", "started_at", "spec", "model", "backend", "workload",
                        "status", "name", "unit", "ci", "ratio", "backend_options"])


def _near(valid):
    """Valid documents with one value somewhere replaced: arbitrary JSON that gets past the top level."""
    def replace(data, path, value):
        if not path or not isinstance(data, (dict, list)) or not data:
            return value
        keys = list(data) if isinstance(data, dict) else list(range(len(data)))
        k = keys[path[0] % len(keys)]
        data[k] = replace(data[k], path[1:], value)
        return data
    return st.builds(lambda p, v: replace(json.loads(json.dumps(valid)), p, v),
                     st.lists(st.integers(0, 20), max_size=7), JSON | st.dictionaries(KEYS, JSON, max_size=3))


def _valid_baseline() -> dict:
    return {"schema": 2, "profile": PROFILE, "configs": {"c": {
        "recorded_at": "2026-12-01", "backend_identity": {"dtype": "float16"}, "packages": {"torch": "2.11.0"},
        "metrics": {"decode_tokens_per_s": {"samples": [1.0, 2.0], "median": 1.5, "cv": 0.1, "runs": [
            {"value": 1.5, "run_id": "r", "host": "h", "boot_id": "b", "started_at": "2026-12-01T00:00:00+00:00"}]}}}},
        "takeaways": {"t": {"verdict": "holds", "ratio": 1.0, "ci": [0.9, 1.1], "packages": {}, "recorded_at": None}}}


def _one_line(exc: BaseException) -> None:
    assert isinstance(exc, QuantperfError), f"{type(exc).__name__}: {exc}"
    assert "\n" not in str(exc), str(exc)


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(doc=_near(_valid_baseline()) | _near(_valid_baseline()) | JSON | st.dictionaries(KEYS, JSON, max_size=5))
def test_arbitrary_json_into_the_baseline_loader(tmp_path, doc):
    (tmp_path / f"{PROFILE}.json").write_text(json.dumps(doc))
    try:
        store = BaselineStore(tmp_path, PROFILE)
    except Exception as exc:
        _one_line(exc)
        return
    for cid, entry in store.data["configs"].items():  # what the readers then do with it
        for metric, m in entry["metrics"].items():
            [float(r["value"]) for r in store.runs(cid, metric)]
            assert all(isinstance(x, (int, float)) for x in m["samples"])
    for t in store.data.get("takeaways", {}).values():
        assert t["verdict"] in ("holds", "flipped", "inconclusive")


@SETTINGS
@given(doc=_near(_result("r1").to_dict()) | _near(_result("r1").to_dict()) | JSON
           | st.dictionaries(KEYS, JSON, max_size=5),
       text=st.text(max_size=30))
def test_arbitrary_json_into_the_results_loader(tmp_path, doc, text):
    import warnings

    good = json.dumps(_result("r1").to_dict())
    for content in (json.dumps(doc) + "\n", good + "\n" + json.dumps(doc) + "\n", good + "\n" + text):
        path = tmp_path / "r.jsonl"
        path.write_text(content)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results = ResultLog(path).read()
        except Exception as exc:
            _one_line(exc)
            continue
        for r in results:  # a valid object: what every reader touches works
            assert isinstance(r, RunResult)
            r.spec.id
            for m in r.metrics.values():
                m.value


def test_a_results_directory_under_a_file_is_one_line(tmp_path):
    from quantperf.errors import StoreWriteError

    (tmp_path / "file").write_text("")
    with pytest.raises(StoreWriteError) as info:
        ResultLog(tmp_path / "file" / "out" / "r.jsonl")
    assert str(tmp_path / "file" / "out" / "r.jsonl") in str(info.value) and "\n" not in str(info.value)


@pytest.mark.filterwarnings("error::UserWarning")
def test_every_committed_results_file_reads_whole():
    """The checks on a result's fields accept every results file the project keeps."""
    files = sorted((ROOT / "docs").rglob("*.jsonl"))
    assert files
    for path in files:
        assert ResultLog(path).read(), path

"""The results store: sittings kept whole, append-only, per profile and host; clear errors for a
newer schema, a corrupt sitting, two writers and a branch that moved; baselines derived from it
in the shape the gate reads."""

import json
import subprocess
import threading

import pytest
from test_history_changepoints import CONFIG, WORKLOAD, synthetic_history, synthetic_results

from quantperf.config import BaselineFileModel, validate
from quantperf.errors import StoreWriteError
from quantperf.history import (
    BranchMovedError,
    DirectoryStore,
    GitBranchStore,
    HistoryError,
    Sitting,
    derive_baseline,
    from_results,
)
from quantperf.history.store import SCHEMA_VERSION, median_interval
from quantperf.results import Metric, ResultLog, RunResult
from quantperf.spec import RunSpec


def _sitting(i=0, host="a1b2c3d4e5", **kw):
    return synthetic_history(n=i + 1, host=host, **kw)[i]


def test_a_sitting_from_a_results_file_keeps_medians_intervals_and_identities(tmp_path):
    log = ResultLog(tmp_path / "results.jsonl")
    results = [RunResult.from_dict(d) for d in _results_dicts()]
    for r in results:
        log.append(r)
    (s,) = from_results(tmp_path / "results.jsonl", summary={"configs": [
        {"key": f"{results[0].spec.id}:speed", "config_id": results[0].spec.id, "kinds": ["speed"],
         "status": "regressed"}]})
    assert (s.profile, s.host, s.run_id, s.boot_id) == ("cpu-test", "a1b2c3d4e5", "run000", "boot0")
    cfg = s.configs[results[0].spec.id]
    m = cfg["metrics"]["decode_tokens_per_s"]
    assert m["ci"][0] <= m["median"] <= m["ci"][1] and m["n"] == 7 and len(m["samples"]) == 7
    assert cfg["backend_identity"] == {"token_ms": 2.0} and cfg["mode"] == "eager" and cfg["outcome"] == "regressed"
    assert s.environment["packages"]["torch"] == "2.11.0"
    assert Sitting.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def _results_dicts():
    env = {"packages": {"torch": "2.11.0"}, "run": {"run_id": "run000", "host": "a1b2c3d4e5", "boot_id": "boot0",
                                                    "started_at": "2026-11-01T02:00:00+00:00"}}
    out = []
    for backend in ("fake-fp16", "fake-int8"):
        spec = RunSpec(model="fake:small", backend=backend, device="cpu", workload=WORKLOAD)
        out.append(RunResult(spec, profile="cpu-test", backend_identity={"token_ms": 2.0}, environment=env,
                             metrics={"decode_tokens_per_s": Metric.of("decode_tokens_per_s", [470, 471, 469, 472,
                                                                                                468, 470, 473])},
                             timestamp="2026-11-01T02:00:05+00:00").to_dict())
    return out


def test_the_interval_of_a_median_covers_it_and_widens_to_the_range_for_few_rounds():
    assert median_interval([3.0, 1.0, 2.0]) == [1.0, 3.0]
    lo, hi = median_interval(list(range(1, 101)))
    assert 40 <= lo < 50.5 < hi <= 61


def test_sittings_are_stored_per_profile_and_host_and_read_in_time_order(tmp_path):
    store = DirectoryStore(tmp_path)
    a = synthetic_history(n=3, host="aaaa")
    b = synthetic_history(n=2, host="bbbb")
    for s in reversed(a + b):
        store.append(s)
    assert store.hosts("cpu-test") == ["aaaa", "bbbb"]
    assert [s.run_id for s in store.read("cpu-test", host="aaaa").sittings] == ["run000", "run001", "run002"]
    assert len(store.read("cpu-test").sittings) == 5
    assert (tmp_path / "cpu-test" / "aaaa" / f"20261101T020000Z-run000-{a[0].part}.json").is_file()
    store.append(a[0])  # the same sitting again: a no-op
    changed = Sitting.from_dict({**a[0].to_dict(), "git_revision": "other"})
    with pytest.raises(HistoryError, match="append-only"):
        store.append(changed)


def test_a_store_written_by_a_newer_schema_is_a_clear_error(tmp_path):
    store = DirectoryStore(tmp_path)
    path = store.append(_sitting())
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(HistoryError, match=r"newer quantperf \(schema_version 2; this one reads up to 1\)") as e:
        store.read("cpu-test")
    assert str(path) in str(e.value)


def test_a_corrupt_sitting_is_an_error_naming_the_file_and_a_tolerant_read_skips_it(tmp_path):
    store = DirectoryStore(tmp_path)
    good = synthetic_history(n=2)
    store.append(good[0])
    bad = store.append(good[1])
    bad.write_text(bad.read_text()[:200])  # cut off
    with pytest.raises(HistoryError, match="corrupt sitting") as e:
        store.read("cpu-test")
    assert str(bad) in str(e.value)
    loaded = store.read("cpu-test", strict=False)
    assert [s.run_id for s in loaded.sittings] == ["run000"]
    assert len(loaded.skipped) == 1 and str(bad) in loaded.skipped[0]


def test_two_writers_at_once_keep_both_sittings_intact(tmp_path):
    history = synthetic_history(n=8)
    stores = [DirectoryStore(tmp_path), DirectoryStore(tmp_path)]
    errors = []

    def write(store, sittings):
        try:
            for s in sittings:
                store.append(s)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(stores[i], history[i::2])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [s.run_id for s in DirectoryStore(tmp_path).read("cpu-test").sittings] == [s.run_id for s in history]
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_interrupted_write_leaves_no_half_sitting(tmp_path, monkeypatch):
    import os

    store = DirectoryStore(tmp_path)
    first, second = synthetic_history(n=2)
    store.append(first)

    def power_cut(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(KeyboardInterrupt):
        store.append(second)
    monkeypatch.undo()
    assert [s.run_id for s in store.read("cpu-test").sittings] == ["run000"]
    assert [p.name for p in (tmp_path / "cpu-test" / first.host).iterdir()] == [store.path_of(first).name]


def test_a_read_only_store_is_one_error_naming_the_file(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    (tmp_path / "cpu-test" / "a1b2c3d4e5").mkdir(parents=True)
    (tmp_path / "cpu-test" / "a1b2c3d4e5").chmod(0o500)
    with pytest.raises(StoreWriteError, match="sitting"):
        DirectoryStore(tmp_path).append(_sitting())


def _bare(tmp_path):
    repo = tmp_path / "store.git"
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(repo)], check=True)
    return repo


def test_a_git_branch_store_appends_sittings_and_reads_them_back(tmp_path):
    repo = _bare(tmp_path)
    store = GitBranchStore(repo, "quantperf-history")
    history = synthetic_history(n=3)
    commits = [store.append(s) for s in history]
    assert len(set(commits)) == 3
    assert [s.run_id for s in store.read("cpu-test").sittings] == ["run000", "run001", "run002"]
    assert store.profiles() == ["cpu-test"]
    log = subprocess.run(["git", "-C", str(repo), "log", "--format=%s", "quantperf-history"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert len(log) == 3
    assert store.append(history[0]) == commits[-1]  # already there: nothing new


@pytest.mark.parametrize("branch", ["main", "master"])
def test_the_store_refuses_the_default_branch(tmp_path, branch):
    with pytest.raises(HistoryError, match="refusing"):
        GitBranchStore(_bare(tmp_path), branch)


def test_the_store_refuses_a_renamed_default_branch(tmp_path):
    repo = tmp_path / "trunk.git"
    subprocess.run(["git", "init", "--bare", "-q", "-b", "trunk", str(repo)], check=True)
    with pytest.raises(HistoryError, match="default branch"):
        GitBranchStore(repo, "trunk")


def test_a_branch_that_moved_under_the_writer_is_detected_and_nothing_is_lost(tmp_path):
    repo = _bare(tmp_path)
    history = synthetic_history(n=3)
    other = GitBranchStore(repo, "quantperf-history")
    other.append(history[0])
    moved = []

    def another_writer_first(store):
        if not moved:  # another writer adds a sitting between our read of the tip and our swap
            moved.append(other.append(history[1]))

    store = GitBranchStore(repo, "quantperf-history")
    store.append(history[2], _before_swap=another_writer_first)
    assert [s.run_id for s in store.read("cpu-test").sittings] == ["run000", "run001", "run002"]

    def always_moves(store):
        always_moves.n += 1
        other.append(synthetic_history(n=4 + always_moves.n)[3 + always_moves.n])

    always_moves.n = 0
    late = synthetic_history(n=20)[19]
    with pytest.raises(BranchMovedError, match="moved under this writer 2 times"):
        store.append(late, retries=1, _before_swap=always_moves)
    ids = [s.run_id for s in store.read("cpu-test").sittings]
    assert "run019" not in ids and ids[:3] == ["run000", "run001", "run002"] and len(ids) == 5


def test_a_derived_baseline_is_a_valid_baselines_file_with_host_tagged_runs(tmp_path):
    history = synthetic_history(n=25, host="aaaa") + synthetic_history(n=4, host="bbbb", seed=5)
    data = derive_baseline(history, "cpu-test", size=20)
    validate(BaselineFileModel, json.loads(json.dumps(data)), tmp_path / "derived.json")
    runs = data["configs"][CONFIG]["metrics"]["decode_tokens_per_s"]["runs"]
    assert len(runs) == 24  # the last 20 sittings of host aaaa and the 4 of bbbb
    assert {r["host"] for r in runs} == {"aaaa", "bbbb"}
    assert runs == sorted(runs, key=lambda r: r["started_at"])
    assert data["provenance"]["derived_from_sittings"] == 24


def test_a_derived_baseline_starts_anew_on_other_backend_options_and_leaves_regressed_sittings_out():
    history = synthetic_history(n=6)
    history[3].configs[CONFIG]["outcome"] = "regressed"
    for s in history[4:]:
        s.configs[CONFIG]["backend_identity"] = {"token_ms": 3.0}
    entry = derive_baseline(history, "cpu-test")["configs"][CONFIG]
    assert [r["run_id"] for r in entry["metrics"]["decode_tokens_per_s"]["runs"]] == ["run004", "run005"]
    other = derive_baseline(history, "cpu-test")["configs"]
    assert len(other[CONFIG.replace("int8", "fp16")]["metrics"]["decode_tokens_per_s"]["runs"]) == 6


def test_the_results_files_of_one_run_are_parts_of_one_sitting(tmp_path):
    (results,) = synthetic_results(n=1)
    store = DirectoryStore(tmp_path)
    first, second = from_results(results[:1]), from_results(results[1:])
    paths = {store.append(first[0]), store.append(second[0])}
    assert len(paths) == 2  # stored side by side, nothing overwritten
    (sitting,) = store.read("cpu-test").sittings
    assert sorted(sitting.configs) == sorted(r.spec.id for r in results)


def test_the_host_key_can_be_given(tmp_path):
    (results,) = synthetic_results(n=1)
    (s,) = from_results(results, host="gpu0a1b2c3")
    assert s.host == "gpu0a1b2c3" and s.relpath.startswith("cpu-test/gpu0a1b2c3/")
    with pytest.raises(HistoryError, match="safe name"):
        from_results(results, host="../up")


def test_two_runners_pushing_to_one_remote_branch_keep_every_sitting(tmp_path):
    remote = _bare(tmp_path)
    history = synthetic_history(n=3)
    runners = []
    for name in ("runner-a.git", "runner-b.git"):
        subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(tmp_path / name)], check=True)
        runners.append(GitBranchStore(tmp_path / name, "quantperf-history"))
    a, b = runners
    a.append(history[0])
    a.push(str(remote))
    b.append(history[1])
    b.push(str(remote))  # rejected first (the remote moved): fetched, b's sitting added on top, pushed
    a.append(history[2])
    a.push(str(remote))
    on_remote = GitBranchStore(remote, "quantperf-history").read("cpu-test").sittings
    assert [s.run_id for s in on_remote] == ["run000", "run001", "run002"]
    assert [s.run_id for s in a.read("cpu-test").sittings] == ["run000", "run001", "run002"]


def test_a_checked_out_branch_is_refused(tmp_path):
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "quantperf-history", str(work)], check=True)
    with pytest.raises(HistoryError, match="checked out"):
        GitBranchStore(work, "quantperf-history")


def _write_every_other(root, start):
    for s in synthetic_history(n=8)[start::2]:
        DirectoryStore(root).append(s)


def test_two_writer_processes_keep_both_sittings_intact(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_every_other, args=(tmp_path, i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [s.run_id for s in DirectoryStore(tmp_path).read("cpu-test").sittings] == [f"run{i:03d}" for i in range(8)]


def test_a_corrupt_sitting_on_the_branch_names_it_and_a_tolerant_read_skips_it(tmp_path):
    store = GitBranchStore(_bare(tmp_path), "quantperf-history")
    good, bad = synthetic_history(n=2)
    store.append(good)
    blob = store._git("hash-object", "-w", "--stdin", input="{ torn").stdout.strip()
    tip = store.tip()
    assert store._swap(store._commit_onto(tip, [(bad.relpath, blob)], "a torn sitting"), tip)
    with pytest.raises(HistoryError, match=f"quantperf-history:{bad.relpath}: a corrupt sitting"):
        store.read("cpu-test")
    loaded = store.read("cpu-test", strict=False)
    assert [s.run_id for s in loaded.sittings] == ["run000"] and bad.relpath in loaded.skipped[0]

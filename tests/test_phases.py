"""Where the time went (quantperf/phases.py): every measured configuration records its phases,
the session summary and the upgrade report add them up, and the upgrade check's overlap
(quantperf/experiments/ahead.py) keeps one fresh process pair per replicate, in ABBA order, and
reports a process started ahead that dies instead of hanging on it. Behaviour, never speed."""

import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from quantperf import phases as P
from quantperf import workers
from quantperf.experiments import ahead as ahead_module
from quantperf.experiments.upgrade import Sides, UpgradeReport, check_config
from quantperf.report.text import render_markdown, render_terminal
from quantperf.report.upgrade import render_upgrade
from quantperf.scheduler import measure, measure_many
from quantperf.spec import RunSpec, Workload
from quantperf.status import Status
from quantperf.summary import SessionSummary

pytestmark = pytest.mark.cpu

TINY = Workload(batch_size=1, prompt_tokens=8, new_tokens=4, warmup_rounds=1, rounds=2)


def _spec(backend="fake-fp16"):
    return RunSpec("fake:small", backend, "cpu", "eager", TINY)


def test_a_measured_configuration_records_every_phase_within_its_wall(monkeypatch):
    # the fake's own clock would make its rounds take microseconds: a measure phase of 0.000 s
    monkeypatch.setenv("QUANTPERF_FAKE_CLOCK", "real")
    t0 = time.monotonic()
    r = measure(_spec())
    wall = time.monotonic() - t0
    assert r.status == Status.OK, r.reason
    phases = r.timings["phases"]
    assert list(phases) == list(P.PHASES)
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) <= wall
    for happened in ("load", "warmup", "measure"):
        assert phases[happened] > 0, happened
    # the process was spawned beside the preparing: the wait for it is `start`, its own seconds overlapped
    assert r.timings["overlapped"]["start"] > 0 and phases["start"] >= 0
    assert phases["quality"] == 0


def test_interleaved_rounds_are_shared_so_the_phases_still_add_up_to_no_more_than_the_wall():
    t0 = time.monotonic()
    results = measure_many([_spec(), _spec("fake-int8")], interleave=True)
    wall = time.monotonic() - t0
    assert all(r.ok for r in results)
    assert sum(sum(r.timings["phases"].values()) for r in results) <= wall


def test_the_summary_adds_the_phases_up_and_prints_one_line(tmp_path):
    r = measure(_spec())
    wall = sum(r.timings["phases"].values()) + 1.0
    summary = SessionSummary(profiles={"cpu": "x"}, phases=P.session_phases([r], wall))
    assert summary.phases["total"] == P.rounded(r.timings["phases"])
    assert summary.phases["other_s"] == pytest.approx(1.0, abs=0.01)
    assert summary.phases["configs"][0]["config_id"] == r.spec.id
    summary.write(tmp_path / "summary.json")
    again = SessionSummary.read(tmp_path / "summary.json")
    assert again.phases == summary.phases
    merged = SessionSummary.merge([again, again])
    assert merged.phases["total"]["load"] == pytest.approx(2 * summary.phases["total"]["load"], abs=0.002)
    assert len(merged.phases["configs"]) == 2
    assert "time: " in render_terminal(summary) and ", other 1.0 s" in render_terminal(summary)
    assert r.spec.id in render_markdown(summary)


def test_a_negative_other_is_shown_not_hidden():
    assert P.line({"load": 5.0}, 4.0).endswith("other -1.0 s")


def _counting(monkeypatch, started_only=False):
    """The worker processes opened (`started_only`: those started in a thread ahead of their
    turn, quantperf.starting.Starting's, not a preparer)."""
    import threading

    spawned = []
    real = workers.open_worker

    def counted(*args, **kwargs):
        w = real(*args, **kwargs)
        if not started_only or threading.current_thread().name.startswith("quantperf-start"):
            spawned.append(w)
        return w

    monkeypatch.setattr(workers, "open_worker", counted)
    return spawned


def test_overlap_keeps_one_fresh_pair_per_replicate_in_abba_order_and_the_report_carries_the_phases(monkeypatch):
    spawned = _counting(monkeypatch)
    check, _ = check_config(_spec(), Sides(), pairs=3, blocks=1, tolerance=0.5, overlap=True)
    assert check.status == Status.OK, check.message
    assert [p.first for p in check.pairs] == ["A", "B", "A"]
    pids = [p.pids[n] for p in check.pairs for n in ("A", "B")]
    assert len(set(pids)) == len(pids) == 6 and None not in pids
    assert len(spawned) == 2 * 3  # the measuring processes: two per pair, none more
    assert all(w.proc.poll() is not None for w in spawned)  # nothing left running
    assert check.overlapped["start"] > 0  # pairs 2 and 3 were started ahead
    assert set(P.PHASES) <= set(check.phases) and check.phases["measure"] > 0
    assert sum(check.phases[p] for p in P.PHASES) <= check.phases["wall_s"]
    rep = UpgradeReport(kind="aa", profile="x", device="cpu", overlay={}, describe="A/A",
                        settings={"pairs": 3, "blocks": 1, "alpha": 0.05}, configs=[check])
    rep.phases = P.check_phases([check.to_dict()], [], check.phases["wall_s"] + 0.5)
    data = rep.to_dict()
    assert data["phases"]["configs"][0]["config_id"] == check.config_id
    assert data["phases"]["overlapped"]["start"] > 0
    assert data["configs"][0]["phases"]["load"] > 0
    md = render_upgrade(rep, markdown=True)
    assert "where the time went" in md and "time: " in md


def test_the_next_configurations_first_pair_starts_with_this_ones_last_and_is_taken(monkeypatch):
    """`then`: the next configuration's first pair starts with this configuration's last planned pair
    (stopped while its blocks are timed) and the next check takes it (`ahead`): each configuration's
    first pair then costs no start on the wall (an H100 tier A/B: 10-21 s each for its graph and
    eager configurations). Still a fresh pair per replicate, and nothing is left running."""
    spawned = _counting(monkeypatch)
    first, second = _spec(), _spec("fake-int8")
    then = ahead_module.Ahead(second, Sides(), None)
    paused, chained = [], []
    real_pause, real_spawned = then.pause, then._spawned
    monkeypatch.setattr(then, "pause", lambda: paused.append(then.pending) or real_pause())
    monkeypatch.setattr(then, "_spawned", lambda w: chained.append(w.proc.pid) or real_spawned(w))
    one, _ = check_config(first, Sides(), pairs=3, blocks=1, tolerance=0.5, overlap=True, then=then)
    assert one.status == Status.OK, one.message
    assert then.pending and paused == [False, False, True]  # stopped during every pair's blocks, started with the last
    two, _ = check_config(second, Sides(), pairs=3, blocks=1, tolerance=0.5, overlap=True, ahead=then)
    assert two.status == Status.OK, two.message
    assert not then.pending and two.overlapped["start"] > 0
    assert sorted(two.pairs[0].pids.values()) == sorted(chained[:2])  # its first pair: the one started with one's last
    pids = [p.pids[n] for c in (one, two) for p in c.pairs for n in ("A", "B")]
    assert len(set(pids)) == len(pids) == len(spawned) == 12  # two configurations x three pairs x two sides
    assert all(w.proc.poll() is not None for w in spawned)


def test_prepare_runs_once_per_side_of_a_configuration(monkeypatch):
    import quantperf.scheduler as scheduler

    prepared = []
    real = scheduler.prepare_in_process
    monkeypatch.setattr(scheduler, "prepare_in_process",
                        lambda spec, *a, **k: prepared.append(spec.id) or real(spec, *a, **k))
    monkeypatch.delenv("QUANTPERF_AB_OVERLAP", raising=False)
    check, _ = check_config(_spec(), Sides(), pairs=3, blocks=1, tolerance=0.5)  # the default: no overlap
    assert check.status == Status.OK and len(prepared) == 2  # side A and side B, not once per process
    assert not check.overlapped  # nothing started ahead unless QUANTPERF_AB_OVERLAP=1 asks


def test_a_pre_started_process_that_dies_is_reported_and_nothing_is_left_running(monkeypatch):
    spawned = _counting(monkeypatch)
    real = ahead_module.start_pair
    calls = []

    def dying(spec, sides, model_options, phases, backends=None, spawned=None):
        pair = real(spec, sides, model_options, phases, backends, spawned)
        calls.append(pair)
        if len(calls) == 2:  # the first pair started ahead: its side B dies before its turn
            pair["B"].proc.kill()
            pair["B"].proc.wait()
        return pair

    monkeypatch.setattr(ahead_module, "start_pair", dying)
    monkeypatch.setattr(workers, "WORKER_TIMEOUT_S", 60.0)
    check, _ = check_config(_spec(), Sides(), pairs=3, blocks=1, tolerance=0.5, overlap=True)
    assert check.status == Status.ERROR and check.verdict is None
    assert "side B" in check.message and "exited" in check.message, check.message
    assert not check.pairs[1].complete and len(check.pairs) == 2
    assert all(w.proc.poll() is not None for w in spawned)


def test_a_process_that_cannot_start_is_one_error_naming_its_side(tmp_path):
    check, _ = check_config(_spec(), Sides(python_b=str(tmp_path / "no-python")), pairs=3, blocks=1,
                            tolerance=0.5, overlap=True)
    assert check.status == Status.ERROR and "side B" in check.message and "did not start" in check.message


def test_a_groups_fresh_processes_start_side_by_side_while_it_is_prepared(monkeypatch):
    """measure_many spawns every side's fresh process of an interleaved group at once (a barrier
    all three must reach), beside the preparing; the wait is the side's `start`, the hidden
    seconds are its `overlapped`, and no process is left running."""
    import threading


    barrier = threading.Barrier(3, timeout=60)
    spawned = []
    real = workers.open_worker

    def together(spec, *args, **kwargs):
        if threading.current_thread().name.startswith("quantperf-start"):
            barrier.wait()  # the three processes of the group must be starting at the same time
        w = real(spec, *args, **kwargs)
        spawned.append(w)
        return w

    monkeypatch.setattr(workers, "open_worker", together)
    t0 = time.monotonic()
    longer = RunSpec("fake:small", "fake-fp16", "cpu", "eager", replace(TINY, prompt_tokens=16))
    results = measure_many([_spec(), _spec("fake-int8"), longer], interleave=True)
    wall = time.monotonic() - t0
    assert [r.status for r in results] == [Status.OK] * 3, [r.reason for r in results]
    assert len(spawned) == 3 and all(w.proc.poll() is not None for w in spawned)
    for r in results:
        assert r.timings["overlapped"]["start"] > 0 and "imports" in r.timings["overlapped"]
    assert sum(sum(r.timings["phases"].values()) for r in results) <= wall


def test_a_process_that_fails_to_start_fails_its_configuration_only(monkeypatch):

    spawned = []
    real = workers.open_worker

    def broken(spec, *args, **kwargs):
        if spec.backend == "fake-int8":
            raise OSError("cannot spawn: out of process slots")
        w = real(spec, *args, **kwargs)
        spawned.append(w)
        return w

    monkeypatch.setattr(workers, "open_worker", broken)
    ok, failed = measure_many([_spec(), _spec("fake-int8")], interleave=True)
    assert ok.status == Status.OK
    assert failed.status == Status.ERROR and "OSError: cannot spawn: out of process slots" in failed.reason
    assert all(w.proc.poll() is not None for w in spawned)


def test_a_started_process_whose_configuration_fails_to_prepare_is_closed(monkeypatch):
    import quantperf.scheduler as scheduler

    spawned = _counting(monkeypatch)

    def no_export(spec, *a, **k):
        raise RuntimeError("export failed: unsupported operator")

    monkeypatch.setattr(scheduler, "prepare_in_process", no_export)
    (r,) = measure_many([_spec()])
    assert r.status == Status.ERROR and "export failed" in r.reason
    # its start was still under way: it ends in its own thread (killed once spawned, or never spawned)
    import threading

    for t in [t for t in threading.enumerate() if t.name.startswith("quantperf-start")]:
        t.join(timeout=60)
    assert len(spawned) <= 1 and all(w.proc.wait(timeout=60) is not None for w in spawned)


def test_the_next_quality_process_starts_while_the_one_before_computes(monkeypatch, model_cache):
    """Quality passes are not timed: the next configuration's process is spawned and imports
    while the reference computes its logits; every started process is used and closed."""
    from quantperf.scheduler import measure_quality

    spawned = _counting(monkeypatch, started_only=True)
    specs = [RunSpec("fixture", b, "cpu", "eager", TINY) for b in ("torch-bf16", "bnb-nf4")]
    results = measure_quality(specs, params={"context": 32, "max_windows": 1}, profile="cpu-test")
    assert [r.status for r in results] == [Status.OK, Status.OK], [r.reason for r in results]
    assert len(spawned) == 3  # the reference and the two configurations, one process each (no preparer)
    assert all(w.proc.poll() is not None for w in spawned)
    assert all(r.timings["overlapped"]["start"] > 0 for r in results)


def test_no_preparing_process_for_a_cached_synthetic_checkpoint_on_a_backend_that_builds_nothing(monkeypatch,
                                                                                                 tmp_path):
    """prepare_in_process starts no process for a CUDA configuration of a synthetic model whose
    checkpoint is cached, when its backend quantizes at load; anything else is still prepared."""
    import quantperf.scheduler as scheduler
    from quantperf.models import synthetic_target

    class Asked(Exception):
        pass

    def no_process(*a, **k):
        raise Asked

    monkeypatch.setattr(scheduler, "open_worker", no_process)
    monkeypatch.setenv("QUANTPERF_CACHE", str(tmp_path))

    def spec(backend, device="cuda", model="synthetic:llama-125m"):
        return RunSpec(model, backend, device, "kernel", TINY)

    with pytest.raises(Asked):  # not built yet: the preparer builds it
        scheduler.prepare_in_process(spec("bnb-nf4"))
    target = synthetic_target("llama-125m", "cuda")
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"")
    for backend in ("torch-fp16", "bnb-nf4", "bnb-int8-nodecomp", "torchao-int8wo", "torchao-fp8wo"):
        assert scheduler.prepare_in_process(spec(backend)) == {"built": False, "prepare_s": 0.0}, backend
    for other in (spec("ort-int4"),  # exports ahead
                  spec("torch-fp32", device="cpu"),  # built with the host's generator, whichever it is
                  spec("torch-fp16", model="synthetic:llama-1b")):  # another shape, not cached
        with pytest.raises(Asked):
            scheduler.prepare_in_process(other)
    with pytest.raises(Asked):  # an overlay with a cache of its own
        scheduler.prepare_in_process(spec("bnb-nf4"), env={"QUANTPERF_CACHE": str(tmp_path / "b")})


def test_the_architecture_a_reference_loads_is_known_without_loading_it(tmp_path):
    """model_type_of: a synthetic shape's, the fixture's, a local checkpoint's config.json; a hub
    id, a missing or unreadable config or a name that is no module name: None."""
    import json

    from quantperf.models import model_type_of

    assert model_type_of("synthetic:llama-1b") == "llama"
    assert model_type_of("synthetic:qwen2.5-0.5b") == "qwen2"
    assert model_type_of("synthetic:nope") is None
    assert model_type_of("fixture") == "llama"
    assert model_type_of("hf:org/name") is None
    assert model_type_of(str(tmp_path / "missing")) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    assert model_type_of(str(tmp_path)) == "mistral"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "../../os"}))
    assert model_type_of(str(tmp_path)) is None
    (tmp_path / "config.json").write_text("{not json")
    assert model_type_of(str(tmp_path)) is None


def test_a_fresh_processs_imports_include_the_modeling_code_its_load_would_import():
    """imports() imports transformers' modeling code and the model's architecture module (which
    transformers imports lazily, at the first load), so a process started ahead does that off the
    critical path; on the CPU no CUDA context is asked for. In a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from quantperf.spec import RunSpec\n"
        "from quantperf.workers import LocalWorker\n"
        "w = LocalWorker(RunSpec('synthetic:llama-tiny', 'torch-fp32', 'cpu', 'eager'))\n"
        "mods = ('transformers.modeling_utils', 'transformers.models.llama.modeling_llama')\n"
        "before = [m in sys.modules for m in mods]\n"
        "out = w.imports(cuda=True)\n"
        "print(before, [m in sys.modules for m in mods], out['cuda_context_s'])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[-2] == "[False, False] [True, True] None", run.stdout


def test_a_backend_found_unavailable_starts_no_further_process_in_that_environment(monkeypatch):
    """A worker that finds its backend unavailable on the device (no GPU here) tells the session:
    a later configuration of that backend and device gets the same reason without a process of
    its own; a changed environment asks a worker again."""
    import quantperf.starting as starting

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("needs a host without a GPU")
    monkeypatch.setattr(starting, "_UNAVAILABLE", {})
    spawned = _counting(monkeypatch)
    asked = []
    real = workers.ProcessWorker._request

    def request(self, method, kwargs):
        asked.append(method)
        return real(self, method, kwargs)

    monkeypatch.setattr(workers.ProcessWorker, "_request", request)
    eager, kernel = (RunSpec("synthetic:llama-tiny", "torch-fp16", "cuda", m, TINY) for m in ("eager", "kernel"))
    first = measure(eager, profile="gpu-test")
    # its preparing process found it (what a load would say): no measuring process loaded anything
    assert "prepare_for" in asked and "load" not in asked
    second = measure(kernel, profile="gpu-test")
    assert first.status == second.status == Status.UNAVAILABLE
    assert second.reason == first.reason and "GPU" in first.reason
    assert second.backend_identity == first.backend_identity
    assert len(spawned) == 1  # the first configuration's measuring process only
    # pytest names each test in the environment, torch sets CUDA_MODULE_LOADING at its first CUDA call and
    # TORCHINDUCTOR_CACHE_DIR at its first inductor import: none is another environment (on an H100 each
    # made processes started ahead miss)
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "another test")
    monkeypatch.setenv("CUDA_MODULE_LOADING", "LAZY")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/set-by-the-parents-first-modeling-import")
    assert measure(replace(kernel, model="synthetic:llama-125m"), profile="gpu-test").reason == first.reason
    assert len(spawned) == 1
    assert measure(replace(kernel, backend="torch-bf16"), profile="gpu-test").status == Status.UNAVAILABLE
    assert len(spawned) == 2  # another backend: asked again
    monkeypatch.setenv("QUANTPERF_TEST_SOMETHING_ELSE", "1")
    assert measure(kernel, profile="gpu-test").status == Status.UNAVAILABLE
    assert len(spawned) == 3  # another environment: asked again


def test_an_ab_configuration_of_a_backend_found_unavailable_on_a_side_starts_no_pair(monkeypatch):
    """An A/B of a configuration whose backend an earlier configuration's process found unavailable
    in a side's environment (the tier's ORT eager configurations after its kernel batch: 26-30 s of
    process starts each on an H100) is decided without a process: skipped when it is side A's,
    an error naming side B when B's (the upgrade lost it)."""
    import quantperf.starting as starting

    def no_pair(*a, **kw):
        raise AssertionError("no process may start for a backend known unavailable")

    monkeypatch.setattr(ahead_module, "start_pair", no_pair)
    monkeypatch.setattr(starting, "_UNAVAILABLE", {})
    spec = RunSpec("synthetic:llama-tiny", "fake-fp16", "cpu", "eager", TINY)
    sides = Sides(env_a={"QP_SIDE": "a"})
    starting.remember_unavailable(spec, None, {"QP_SIDE": "a"}, "no CUDA provider\nmore", {})
    closed = []
    started_for_it = SimpleNamespace(close=lambda: closed.append(True))  # a pair the check before started for it
    check, keep = check_config(spec, sides, pairs=3, overlap=True, ahead=started_for_it)
    assert check.status == Status.SKIPPED and check.verdict is None and keep == {} and check.pairs == []
    assert closed == [True]
    assert check.message == "not measurable in A: unavailable: no CUDA provider"
    monkeypatch.setattr(starting, "_UNAVAILABLE", {})
    starting.remember_unavailable(spec, None, None, "no CUDA provider", {})  # side B: this environment
    check, _ = check_config(spec, sides, pairs=3, overlap=False)
    assert check.status == Status.ERROR and "side B" in check.message
    assert "unavailable: no CUDA provider" in check.message


def test_the_next_configurations_processes_start_ahead_and_sit_idle_while_anything_is_timed(monkeypatch):
    """measure_many(ahead=...) spawns the next configurations' processes while its own load; every
    one of them has finished starting before a round is timed; the next call takes them (no
    process of its own), and one no call takes is closed by close_ahead."""
    from quantperf import starting

    monkeypatch.setattr(starting, "_AHEAD", {})
    spawned = _counting(monkeypatch, started_only=True)
    idle_at_rounds = []
    real = workers.ProcessWorker._request

    def request(self, method, kwargs):
        if method == "rounds":
            idle_at_rounds.append(all(one._future.done() for one in starting._AHEAD.values()))
        return real(self, method, kwargs)

    monkeypatch.setattr(workers.ProcessWorker, "_request", request)
    a, b = _spec(), _spec("fake-int8")
    assert measure_many([a], ahead=[b])[0].status == Status.OK
    assert len(spawned) == 2 and len(starting._AHEAD) == 1 and idle_at_rounds == [True]
    monkeypatch.setenv("CUDA_MODULE_LOADING", "LAZY")  # what torch sets in this process at its first CUDA call
    second = measure_many([b])[0]
    assert second.status == Status.OK and len(spawned) == 2  # b's process was the one started ahead
    assert second.timings["overlapped"]["imports"] > 0 and not starting._AHEAD
    measure_many([a], ahead=[b])
    left = list(starting._AHEAD.values())
    assert len(left) == 1 and len(spawned) == 4
    starting.close_ahead()
    assert not starting._AHEAD and all(w.proc.poll() is not None for w in spawned)


def test_a_process_started_ahead_in_an_environment_changed_since_is_closed_and_the_variables_named(monkeypatch):
    """A variable the parent changes between starting a process ahead and taking it (here one
    quantperf does not know as volatile) makes the process a miss: it is closed, a fresh one is
    started, and the progress log names the variable (its value is never shown)."""
    import io

    from quantperf import progress, starting

    monkeypatch.setattr(starting, "_AHEAD", {})
    monkeypatch.setattr(starting, "_AHEAD_ENV", {})
    spawned = _counting(monkeypatch, started_only=True)
    out = io.StringIO()
    progress.activate(progress.Steps(out, log=True))
    try:
        a, b = _spec(), _spec("fake-int8")
        measure_many([a], ahead=[b])
        monkeypatch.setenv("QP_TEST_SET_BY_AN_IMPORT", "secret-value")
        second = measure_many([b])[0]
    finally:
        progress.activate(None)
    assert second.status == Status.OK and len(spawned) == 3  # b's own fresh process
    log = out.getvalue()
    assert f"{b.id}: the process started ahead is not used" in log and "QP_TEST_SET_BY_AN_IMPORT" in log
    assert "secret-value" not in log and not starting._AHEAD and not starting._AHEAD_ENV
    assert all(w.proc.wait(timeout=30) is not None for w in spawned)  # the one started ahead was closed too


def test_a_quality_pass_takes_the_processes_started_ahead_for_it(monkeypatch, model_cache):
    """quality_first names the reference and the next QUALITY_AHEAD configurations; processes
    started ahead for them (by the suite's last speed group) are the ones the pass uses."""
    from quantperf import starting
    from quantperf.scheduler import QUALITY_AHEAD, measure_quality, quality_first, quality_reference

    monkeypatch.setattr(starting, "_AHEAD", {})
    specs = [RunSpec("fixture", b, "cpu", "eager", TINY) for b in ("torch-bf16", "bnb-nf4")]
    first = quality_first(specs)
    assert quality_first([]) == [] and first[0] == quality_reference(specs[0])
    assert first[0].backend not in {s.backend for s in specs} and first[1:] == specs[:QUALITY_AHEAD]
    spawned = _counting(monkeypatch, started_only=True)
    for spec in first:
        starting.start_ahead(spec, None, None, None)
    results = measure_quality(specs, params={"context": 32, "max_windows": 1}, profile="cpu-test")
    assert [r.status for r in results] == [Status.OK, Status.OK], [r.reason for r in results]
    assert len(spawned) == 3 and not starting._AHEAD  # every process started ahead was taken, none more
    assert all(w.proc.poll() is not None for w in spawned)


def test_an_ab_quality_check_starts_both_sides_together_and_the_next_pair_ahead(monkeypatch, model_cache):
    """Under an A/B (upgrade-check, --qp-against) a quality configuration's two processes start
    together (both before side A's pass), the next configuration's pair is started while it is
    compared and is the pair that configuration uses; an A/A gives `identical`, and a pair never
    taken is closed."""
    from quantperf.experiments import quality_ab
    from quantperf.experiments.quality_ab import QualityAhead, quality_check

    events = []
    real_request = workers.ProcessWorker._request

    class Recorded(quality_ab.Starting):
        def __init__(self, spec, *args, **kwargs):
            super().__init__(spec, *args, **kwargs)
            events.append(("start", self))

    def request(self, method, kwargs):
        if method == "quality":
            events.append(("quality", self))
        return real_request(self, method, kwargs)

    monkeypatch.setattr(quality_ab, "Starting", Recorded)
    monkeypatch.setattr(workers.ProcessWorker, "_request", request)
    specs = [RunSpec("fixture", b, "cpu", "eager", TINY) for b in ("torch-fp32", "torch-bf16", "bnb-nf4")]
    ahead, rows = QualityAhead(Sides()), []
    try:
        for i, spec in enumerate(specs[:2]):
            started = ahead.take(spec)
            assert (started is None) == (i == 0)
            ahead.start(specs[i + 1:i + 2])
            rows.append(quality_check(spec, Sides(), {"context": 32, "max_windows": 1}, profile="cpu-test",
                                      started=started))
        third = list(ahead._pairs[specs[2].id][1].values())
    finally:
        ahead.close()
    assert [(r["status"], r["verdict"]) for r in rows] == [(Status.OK, Status.IDENTICAL)] * 2, rows
    starts = [(one.spec.backend, one) for kind, one in events if kind == "start"]
    assert [b for b, _ in starts] == ["torch-bf16"] * 2 + ["torch-fp32"] * 2 + ["bnb-nf4"] * 2
    compared = [w for kind, w in events if kind == "quality"]
    first_pass = [kind for kind, _ in events].index("quality")
    assert [kind for kind, _ in events[:first_pass]] == ["start"] * 4  # A and B of the first (and the next pair)
    assert compared[2:] == [one._worker for _, one in starts[:2]]  # the second's pair: the one started ahead
    for one in third:  # closed, never taken: no process of it is left
        one.wait()
        assert one._worker is None or one._worker.proc.wait(timeout=30) is not None
    assert all(w.proc.wait(timeout=30) is not None for w in compared)


def test_a_quality_pair_started_ahead_is_not_used_after_the_environment_changed(monkeypatch):
    """QualityAhead: a pair started before side A's environment changed is closed at its turn (a
    fresh pair starts instead); a side whose backend the session found unavailable starts no process."""
    from quantperf import starting
    from quantperf.experiments import quality_ab

    made, closed = [], []

    class Dummy:
        def __init__(self, spec, model_options=None, python=None, env=None):
            self.spec, self.env = spec, env
            made.append(self)

        def close(self):
            closed.append(self)

    monkeypatch.setattr(quality_ab, "Starting", Dummy)
    spec = RunSpec("fixture", "torch-bf16", "cpu", "eager", TINY)
    sides = Sides(env_a={"QP_SIDE": "1"})
    ahead = quality_ab.QualityAhead(sides)
    ahead.start([spec])
    assert len(made) == 2 and ahead.take(spec) is not None
    ahead.start([spec])
    sides.env_a = {"QP_SIDE": "2"}  # A's overlay changed since its pair started
    assert ahead.take(spec) is None and closed == made[2:]
    monkeypatch.setattr(starting, "_UNAVAILABLE", {})
    starting.remember_unavailable(spec, None, None, "no such library", {})  # side B (this environment) only
    assert list(quality_ab.start_sides(spec, sides, None)) == ["A"]


def test_a_pair_started_ahead_is_stopped_while_a_block_is_timed(monkeypatch):
    """The overlap's next pair starts with the current one and does its imports only while nothing
    is timed: during every timed round each of its processes is stopped (state T); it is continued
    afterwards and taken, and the check is the same fresh pair per replicate."""
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("reads process states from /proc")
    ahead_procs = []
    real_spawned = ahead_module.Ahead._spawned

    def spawned(self, worker):
        real_spawned(self, worker)  # stopped first if a block is being timed, then visible to the check below
        ahead_procs.append(worker)

    monkeypatch.setattr(ahead_module.Ahead, "_spawned", spawned)
    states, loaded = [], set()
    real = workers.ProcessWorker._request

    def request(self, method, kwargs):
        if method == "load":
            loaded.add(self.proc.pid)
        if method == "rounds":  # the pair started ahead: not loaded yet, still running
            def waiting():
                return [w for w in ahead_procs if w.proc.pid not in loaded and w.proc.poll() is None]

            deadline = time.monotonic() + 30
            while len(loaded) < 6 and len(waiting()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # pairs 1 and 2 have a next pair: its processes are spawned (a fake round is short)
            states.extend(open(f"/proc/{w.proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] for w in waiting())
        return real(self, method, kwargs)

    monkeypatch.setattr(workers.ProcessWorker, "_request", request)
    check, _ = check_config(_spec(), Sides(), pairs=3, blocks=1, tolerance=0.5, overlap=True)
    assert check.status == Status.OK, check.message
    assert [p.first for p in check.pairs] == ["A", "B", "A"]
    assert len(ahead_procs) == 4  # pairs 2 and 3 were started ahead
    assert states and set(states) == {"T"}, states
    assert all(w.proc.poll() is not None for w in ahead_procs)


def test_an_interleaved_group_builds_at_once_and_warms_up_at_once_only_where_nothing_is_timed():
    """scheduler.warm_group: the sides' builds run at once (a barrier all must reach); warm-ups that
    time nothing (generation's) run at once too, with the wall shared out; a kernel-mode group warms
    up one side after the other; a side that fails is closed with its reason, the others go on."""
    import threading

    from quantperf.scheduler import Side, warm_group

    def group(times: bool, broken: str | None = None):
        barrier = threading.Barrier(3, timeout=20)
        order: list[str] = []

        class Worker:
            def __init__(self, name):
                self.name, self.closed = name, False

            def build(self):
                barrier.wait()  # every build is under way at the same time
                if self.name == broken:
                    raise RuntimeError("graph capture crashed")
                return {"status": "ok", "build_s": 0.1, "warmup_times": times}

            def warmup(self):
                if not times:
                    barrier.wait()
                order.append(self.name)
                return {"status": "ok", "warmup_s": 0.2}

            def close(self):
                self.closed = True

        sides = []
        for name in ("fake-fp16", "fake-int8", "fake-nf4"):  # on a GPU (on a CPU: one after the other)
            side = Side(replace(_spec(name), device="cuda"), Worker(name))
            side.info = {"status": "ok", "identity": {"b": name}}
            sides.append(side)
        warm_group(sides, "cpu-test")
        return sides, order

    sides, order = group(times=False)
    assert all(s.ok and s.timings["warmup_s"] == 0.2 for s in sides) and sorted(order) == sorted(
        s.spec.backend for s in sides)
    assert all(s.phases["warmup"] > 0 for s in sides)
    sides, order = group(times=True, broken="fake-int8")
    assert order == ["fake-fp16", "fake-nf4"]  # one after the other, in the group's order
    bad = sides[1]
    assert bad.failed.status == Status.ERROR and "graph capture crashed" in bad.failed.reason and bad.worker is None


def test_a_process_still_starting_is_killed_not_waited_for_when_nobody_takes_it(monkeypatch):
    """Starting.close() on a process still doing its imports (its configuration found unavailable,
    or not measured after all) kills it at once instead of waiting for the imports to end; one that
    has started is closed as before."""
    import subprocess
    import sys
    import threading

    from quantperf.starting import Starting

    release = threading.Event()
    procs = []

    class Worker:
        def __init__(self):
            self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            self.closed = False
            procs.append(self)

        def close(self):
            self.closed = True
            self.proc.kill()
            self.proc.wait()

    def start_worker(spec, model_options, python, env, timed=None, cuda=False, spawned=None):
        w = Worker()
        spawned(w)
        if not release.wait(20):  # "imports": until released, or until the process is killed
            raise RuntimeError("never released")
        if w.proc.poll() is not None:
            w.close()
            raise workers.StartFailed("imports", RuntimeError("killed"))
        return w

    monkeypatch.setattr(workers, "start_worker", start_worker)
    slow = Starting(_spec())
    deadline = time.monotonic() + 10
    while not procs and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    slow.close()
    assert time.monotonic() - t0 < 2 and procs[0].proc.wait(timeout=5) != 0  # killed, not waited for
    release.set()
    done = Starting(_spec())
    done.wait()
    done.close()
    assert procs[1].closed

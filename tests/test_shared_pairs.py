"""Shared process pairs (quantperf.experiments.shared): one fresh pair of processes hosts every
configuration of a group in turn; the pair is still the unit of replication. Driven with the fake
backends (simulated clock) with QUANTPERF_AB_SHARE naming their mode, and a slowdown injected into
side B's environment only."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from quantperf.errors import ConfigError
from quantperf.experiments.shared import DEFAULT_SHARED_MODES, SHARE_ENV, check_all, groups, shared_modes
from quantperf.experiments.upgrade import Sides
from quantperf.spec import RunSpec, Workload
from quantperf.status import Status

WORKLOAD = Workload(prompt_tokens=8, new_tokens=12, warmup_rounds=1)


def _spec(backend: str, mode: str = "eager") -> RunSpec:
    return RunSpec("fake:small", backend, "cpu", mode, WORKLOAD)


def test_shared_modes_setting(monkeypatch):
    monkeypatch.delenv(SHARE_ENV, raising=False)
    assert shared_modes() == DEFAULT_SHARED_MODES == ("kernel",)
    assert shared_modes("off") == () and shared_modes("0") == ()
    assert shared_modes("kernel, eager") == ("kernel", "eager")
    with pytest.raises(ConfigError, match=r"QUANTPERF_AB_SHARE='kernal'.*off.*eager, graph, kernel"):
        shared_modes("kernal")
    monkeypatch.setenv(SHARE_ENV, "graph")
    assert shared_modes() == ("graph",)


def test_groups_keep_order_and_group_only_shared_modes():
    a, b, c, d = _spec("fake-fp16"), _spec("fake-int8", "graph"), _spec("fake-int8"), _spec("fake-fp16", "graph")
    assert groups([a, b, c, d], ("eager",)) == [[a, c], [b], [d]]
    assert groups([a, b, c, d], ()) == [[a], [b], [c], [d]]
    assert groups([a, b, c, d], ("eager", "graph")) == [[a, c], [b, d]]


def test_a_shared_modes_configuration_alone_is_checked_as_shared_pairs_check_it(monkeypatch):
    """A shared mode's group of one is still checked on shared pairs (check_shared: decode shape only,
    the A/B's sample budget), so a report's `kernel_sample_budget_ms` holds for every kernel-mode check;
    a configuration of another mode gets check_config."""
    from quantperf.experiments import shared, upgrade

    calls = []
    monkeypatch.setattr(shared, "check_shared", lambda group, sides, **kw: calls.append(("shared", len(group)))
                        or {s.id: (s.id, {}) for s in group})
    monkeypatch.setattr(upgrade, "check_config", lambda spec, sides, **kw: calls.append(("own", 1)) or (spec.id, {}))
    got = check_all([_spec("fake-fp16", "kernel"), _spec("fake-fp16")], Sides(), tolerance_of=lambda s: (0.05, "x"),
                    share=("kernel",))
    assert calls == [("shared", 1), ("own", 1)] and [g[0] for g in got] == [_spec("fake-fp16", "kernel").id,
                                                                               _spec("fake-fp16").id]


@pytest.fixture(scope="module")
def shared_run():
    """fake-fp16, fake-lib (unavailable: its library is not installed) and fake-int8 on shared pairs,
    side B 0.6 ms/token slower for fake-int8 only (3 ms/token: x1.2), 3 pairs x 2 blocks."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTPERF_TEST_BACKENDS", "1")
        specs = [_spec("fake-fp16"), _spec("fake-lib"), _spec("fake-int8")]
        sides = Sides(env_b={"QUANTPERF_INJECT_DELAY_MS": "fake-int8=0.6"}, label_b="B (slowed)")
        said: list[str] = []
        out = check_all(specs, sides, tolerance_of=lambda s: (0.05, "configured"), share=("eager",), pairs=3,
                        blocks=2, max_blocks=None, alpha=0.05, profile="cpu-test", progress=said.append)
        yield {s.backend: check for s, (check, _keep) in zip(specs, out)}, said


def test_shared_pairs_find_exactly_the_slowed_configuration(shared_run):
    checks, said = shared_run
    fp16, lib, int8 = checks["fake-fp16"], checks["fake-lib"], checks["fake-int8"]
    assert int8.verdict == Status.REGRESSED and int8.low > 1.05, int8
    assert int8.ratio == pytest.approx(1.2, rel=0.03)
    assert fp16.verdict == Status.OK and 0.98 < fp16.ratio < 1.02, fp16  # equivalence shown, no slowdown
    assert lib.status == Status.SKIPPED and "not measurable in A" in lib.message and "qp_slowlib" in lib.message
    assert any("shared process pairs: 3 eager configurations" in line for line in said)
    for c in (fp16, int8):
        assert [p.first for p in c.pairs] == ["A", "B", "A"] and all(len(p.blocks) == 2 for p in c.pairs)
        assert c.phases["measure"] > 0 and c.phases["wall_s"] > 0


def test_a_pair_is_one_pair_of_processes_for_every_configuration(shared_run):
    """Pair i of each configuration ran in the same two processes (an unavailable configuration
    between them did not end the pair); pairs i and j never share a process."""
    checks, _ = shared_run
    fp16, int8 = checks["fake-fp16"], checks["fake-int8"]
    for i in range(3):
        assert fp16.pairs[i].pids == int8.pairs[i].pids and None not in fp16.pairs[i].pids.values()
        assert fp16.pairs[i].pids["A"] != fp16.pairs[i].pids["B"]
    pids = [pid for p in fp16.pairs for pid in p.pids.values()]
    assert len(set(pids)) == 6, pids


def test_unload_says_when_a_process_must_not_host_another(monkeypatch):
    """A CUDA graph capture that failed in a process leaves later captures there timed eagerly:
    the worker says so when it unloads, and the shared pair starts fresh processes."""
    from quantperf.scenarios import kernel
    from quantperf.workers import LocalWorker

    monkeypatch.setenv("QUANTPERF_TEST_BACKENDS", "1")
    w = LocalWorker(_spec("fake-fp16"))
    assert w.load()["status"] == Status.OK
    assert w.unload() == {"fresh_needed": None} and w.loaded is None
    monkeypatch.setattr(kernel, "_CAPTURE_BROKEN", True)
    assert "capture failed" in w.switch(spec=_spec("fake-int8").to_dict())["fresh_needed"]
    assert w.spec.backend == "fake-int8" and w.load()["status"] == Status.OK
    w.close()


def test_a_configuration_that_ended_its_processes_goes_last_from_the_next_pair_on(monkeypatch):
    """The pairs' order rotates, but a configuration after which the processes could host no other
    (a failed CUDA graph capture) is put last from the next pair on: the rest of a pair then needs
    no fresh processes for it. With the last planned pair the next configuration's first pair starts."""
    import random

    from quantperf.experiments import shared
    from quantperf.experiments.upgrade import PairRecord

    orders: list[list[str]] = []
    started: list = []
    then = SimpleNamespace(start=lambda: None)  # the next configuration's Ahead (AgainstSession._chain)

    def pair(order, sides, index, blocks, *, checks, breaking, **kw):
        orders.append([s.backend for s in order])
        started.append(kw["start_next"] is then.start and kw["then"] is then)
        for spec in order:
            rec = PairRecord(index, "A" if index % 2 == 0 else "B")
            rec.blocks.append({"a": [1.0], "b": [1.0], "log_ratio": random.gauss(0, 1e-4), "tokens_match": None})
            checks[spec.id].pairs.append(rec)
            if spec.backend == "fake-int8":
                breaking.add(spec.id)

    monkeypatch.setattr(shared, "_shared_pair", pair)
    monkeypatch.setattr(shared, "_Preparing", lambda *a: SimpleNamespace(close=lambda: None, seconds=None))
    specs = [_spec("fake-fp16"), _spec("fake-int8"), _spec("fake-lib")]
    out = shared.check_shared(specs, Sides(), tolerance_of=lambda s: (0.05, "configured"), pairs=3, blocks=1,
                              max_blocks=None, alpha=0.05, then=then)
    assert started == [False, False, True]  # the next configuration's first pair starts with the last pair
    # rotated ([int8, lib, fp16], then [lib, fp16, int8]) with int8 moved last
    assert orders == [["fake-fp16", "fake-int8", "fake-lib"], ["fake-lib", "fake-fp16", "fake-int8"],
                      ["fake-lib", "fake-fp16", "fake-int8"]]
    assert all(len(check.pairs) == 3 for check, _ in out.values())


def test_a_failed_capture_says_whether_a_fresh_pair_follows(monkeypatch):
    """A configuration after which the processes can host no other ends them: mid-pair the log says
    the next configuration gets a fresh pair (and one is started), last in its pair that the pair's
    processes end with it."""
    from quantperf.experiments import ahead, shared
    from quantperf.experiments.upgrade import ConfigCheck

    started, said = [], []

    class Worker:
        def __init__(self, spec):
            self.spec, self.closed = spec, False

        def close(self):
            self.closed = True

    def start_pair(spec, sides, model_options, phases, backends):
        started.append(spec.backend)
        return {"A": Worker(spec), "B": Worker(spec)}

    monkeypatch.setattr(ahead, "start_pair", start_pair)
    monkeypatch.setattr(shared, "_switch", lambda workers, spec: None)
    monkeypatch.setattr(shared, "_measure_in", lambda spec, *a, **kw: "a CUDA graph capture failed"
                        if spec.backend == "fake-int8" else None)
    for order in (["fake-int8", "fake-fp16"], ["fake-fp16", "fake-int8"]):
        specs = [_spec(b) for b in order]
        started.clear(), said.clear()
        breaking: set[str] = set()
        shared._shared_pair(specs, Sides(), 0, 1, checks={s.id: ConfigCheck(s.id, s.to_dict()) for s in specs},
                            keeps={s.id: {} for s in specs}, preparing=None, walls={s.id: 0.0 for s in specs},
                            environment=None, profile=None, model_options={}, say=said.append, backends=order,
                            breaking=breaking)
        assert breaking == {_spec("fake-int8").id}
        if order[0] == "fake-int8":
            assert started == ["fake-int8", "fake-fp16"]
            assert said == [f"{specs[0].id}: a CUDA graph capture failed: the next configuration gets a fresh pair"]
        else:
            assert started == ["fake-fp16"]
            assert said == [f"{specs[1].id}: a CUDA graph capture failed: this pair's processes end with it "
                            "(its last configuration)"]


def test_upgrade_check_records_the_shared_modes(tmp_path):
    """The report says which modes shared their pairs (the CLI, an A/A on the fakes, kernel default)."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, QUANTPERF_TEST_BACKENDS="1", QUANTPERF_AB_SHARE="eager")
    args = ["upgrade-check", "--aa", "--backend", "fake-fp16,fake-int8", "--model", "fake:small", "--device", "cpu",
            "--prompt-tokens", "8", "--new-tokens", "12", "--warmup", "1", "--pairs", "3", "--blocks", "1",
            "--json", str(tmp_path / "r.json")]
    out = subprocess.run([sys.executable, "-m", "quantperf", *args], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["settings"]["shared_modes"] == ["eager"]
    assert [c["status"] for c in rep["configs"]] == ["ok", "ok"]
    assert rep["configs"][0]["pairs"][0]["pids"] == rep["configs"][1]["pairs"][0]["pids"]
    assert [c["shared"] for c in rep["configs"]] == [2, 2]
    assert "shared process pairs: 2 configuration(s) measured 2 to a pair of fresh processes" in out.stdout


def test_qp_against_checks_the_planned_kernel_configurations_together(monkeypatch):
    """Under --qp-against the first kernel-mode speed test checks every planned kernel-mode
    configuration of its device at once (shared pairs); eager configurations stay one by one."""
    from quantperf.experiments import shared
    from quantperf.experiments.against import Against, AgainstSession
    from quantperf.experiments.upgrade import ConfigCheck

    k1, k2, e1 = _spec("torch-fp16", "kernel"), _spec("bnb-nf4", "kernel"), _spec("fake-fp16")
    batches = []

    def fake_check_all(specs, sides, **kw):
        batches.append([s.id for s in specs])
        return [(ConfigCheck(s.id, s.to_dict(), verdict=Status.OK), {}) for s in specs]

    monkeypatch.setattr(shared, "check_all", fake_check_all)
    monkeypatch.delenv(SHARE_ENV, raising=False)
    ab = AgainstSession(Against("x==1", "pins", pins=["x==1"]), profiles={"cpu": "cpu-test"}, planned=[k1, e1, k2])
    ab.sides = Sides()
    monkeypatch.setattr(ab, "start", lambda: True)
    for spec in (k2, k1, e1):
        assert ab._measure(spec).config_id == spec.id
    assert batches == [[k2.id, k1.id], [e1.id]]
    monkeypatch.setenv(SHARE_ENV, "off")
    ab.checks.clear()
    batches.clear()
    for spec in (k1, k2):
        ab._measure(spec)
    assert batches == [[k1.id], [k2.id]]


def test_qp_against_measures_the_planned_takeaways_kernel_configurations_in_the_same_batch(monkeypatch):
    """A takeaway's kernel-mode configurations that no speed test selects join the first kernel
    batch (one set of shared pairs, not one more later), where the claim applies to the profile."""
    from quantperf.experiments import shared
    from quantperf.experiments.against import Against, AgainstSession
    from quantperf.experiments.upgrade import ConfigCheck

    k1, k2, k3, k4 = (_spec(b, "kernel") for b in ("torch-fp16", "bnb-nf4", "fake-fp16", "fake-int8"))

    class Claim:
        def __init__(self, a, b, profile):
            self.a, self.b, self.device, self.profile = a, b, "cpu", profile

        def applies_to(self, profile):
            return profile == self.profile

        def specs(self, workload):
            return [self.a, self.b]

    batches = []
    monkeypatch.setattr(shared, "check_all", lambda specs, sides, **kw: batches.append([s.id for s in specs]) or [
        (ConfigCheck(s.id, s.to_dict(), verdict=Status.OK), {}) for s in specs])
    monkeypatch.delenv(SHARE_ENV, raising=False)
    claims = [(Claim(k1, k3, "cpu-test"), None), (Claim(k1, k4, "another-profile"), None)]
    ab = AgainstSession(Against("x==1", "pins", pins=["x==1"]), profiles={"cpu": "cpu-test"}, planned=[k1, k2],
                        planned_claims=claims)
    ab.sides = Sides()
    monkeypatch.setattr(ab, "start", lambda: True)
    ab._measure(k1)
    assert batches == [[k1.id, k2.id, k3.id]]  # k4's claim does not apply to this profile


def test_only_an_undecided_configuration_takes_the_further_pairs(monkeypatch):
    """Planned looks on shared pairs: a configuration decided at its first look leaves the pairs;
    an inconclusive one (a tolerance no A/A can show) takes one more pair per look, up to the last."""
    from quantperf.experiments import upgrade

    monkeypatch.setenv("QUANTPERF_TEST_BACKENDS", "1")
    specs = [_spec("fake-fp16"), _spec("fake-int8")]
    tol = {"fake-fp16": 1e-4, "fake-int8": 0.05}
    # fake-fp16 is an A/A against a tolerance its 1% jitter cannot show: its interval lands wholly
    # outside [1/(1+tau), 1+tau] by chance alone (at most alpha over its looks, about 1 run in 20),
    # so its looks are held undecided here; fake-int8's verdicts are the real ones
    real = upgrade.decide
    monkeypatch.setattr(upgrade, "decide", lambda low, high, tau: Status.INCONCLUSIVE if tau == tol["fake-fp16"]
                        else real(low, high, tau))
    out = check_all(specs, Sides(env_b={"QUANTPERF_INJECT_DELAY_MS": "fake-int8=0.6"}),
                    tolerance_of=lambda s: (tol[s.backend], "configured"), share=("eager",), pairs=3, blocks=2,
                    max_blocks=10, alpha=0.05, profile="cpu-test")
    (fp16, _), (int8, _) = out
    assert (int8.verdict, int8.looks_used, len(int8.pairs)) == (Status.REGRESSED, 1, 3)
    assert (fp16.verdict, fp16.looks_planned, fp16.looks_used, len(fp16.pairs)) == (Status.INCONCLUSIVE, 3, 3, 5)
    assert fp16.pairs[3].pids != fp16.pairs[2].pids and fp16.pairs[2].pids == int8.pairs[2].pids


def test_overlap_setting(monkeypatch):
    from quantperf.experiments.ahead import overlap_default

    monkeypatch.delenv("QUANTPERF_AB_OVERLAP", raising=False)
    assert overlap_default() is False and overlap_default("cpu") is False  # 2 cores: imports slow the warm-ups
    assert overlap_default("cuda") is True  # measured on an H100: 215 s -> 187 s, verdicts as without
    monkeypatch.setenv("QUANTPERF_AB_OVERLAP", "1")
    assert overlap_default() is True
    monkeypatch.setenv("QUANTPERF_AB_OVERLAP", "0")
    assert overlap_default("cuda") is False
    monkeypatch.setenv("QUANTPERF_AB_OVERLAP", "yes")
    with pytest.raises(ConfigError, match=r"QUANTPERF_AB_OVERLAP='yes'.*use 1 .*0 \(never\) or unset"):
        overlap_default()


def test_pairs_started_ahead_keep_a_fresh_pair_per_replicate(monkeypatch):
    """With QUANTPERF_AB_OVERLAP=1, pair i + 1's processes start (and import every configuration's
    libraries) while pair i measures: still one pair of processes per replicate, shared by the
    configurations, six processes for three pairs; what started ahead is reported as overlapped."""
    monkeypatch.setenv("QUANTPERF_TEST_BACKENDS", "1")
    monkeypatch.setenv("QUANTPERF_AB_OVERLAP", "1")
    specs = [_spec("fake-fp16"), _spec("fake-int8")]
    said: list[str] = []
    out = check_all(specs, Sides(), tolerance_of=lambda s: (0.05, "configured"), share=("eager",), pairs=3,
                    blocks=1, max_blocks=None, alpha=0.05, profile="cpu-test", progress=said.append)
    fp16, int8 = (check for check, _ in out)
    assert fp16.status == int8.status == Status.OK and fp16.verdict == int8.verdict == Status.OK
    for i in range(3):
        assert fp16.pairs[i].pids == int8.pairs[i].pids
    assert len({pid for p in fp16.pairs for pid in p.pids.values()}) == 6
    assert any("each next pair starts while the current one measures" in line for line in said)
    # pairs 2 and 3 were started ahead (their start and imports off the wall); pair 3 started none
    assert fp16.overlapped["start"] > 0 and fp16.overlapped["imports"] > 0
    assert any(line.startswith("prepared 2 configurations in") for line in said)


def test_a_pair_starts_its_two_processes_side_by_side(monkeypatch):
    """start_pair spawns and imports side A and side B at once (a barrier both must reach), imports
    the libraries of every backend it is given, and names the side that failed, closing the other."""
    import threading

    from quantperf import workers
    from quantperf.experiments.ahead import PairStartFailed, start_pair

    barrier = threading.Barrier(2, timeout=20)
    made = []

    class Fake:
        def __init__(self, spec, isolation, options, python=None, env=None):
            barrier.wait()  # both sides must be starting at the same time
            self.side, self.closed, self.asked = (env or {}).get("SIDE"), False, None
            made.append(self)

        def imports(self, backends=None):
            self.asked = backends
            if self.side == "B-broken":
                raise RuntimeError("no such library")
            return {"imports_s": 0.0}

        def close(self):
            self.closed = True

    monkeypatch.setattr(workers, "open_worker", Fake)
    phases: dict = {}
    pair = start_pair(_spec("fake-fp16"), Sides(env_a={"SIDE": "A"}, env_b={"SIDE": "B"}), {}, phases,
                      ["fake-fp16", "fake-int8"])
    assert {n: w.side for n, w in pair.items()} == {"A": "A", "B": "B"}
    assert all(w.asked == ["fake-fp16", "fake-int8"] for w in pair.values())
    assert set(phases) == {"start", "imports"}
    with pytest.raises(PairStartFailed) as failed:
        start_pair(_spec("fake-fp16"), Sides(env_a={"SIDE": "A"}, env_b={"SIDE": "B-broken"}), {}, {})
    assert failed.value.side == "B" and "failed in its imports: RuntimeError: no such library" in failed.value.reason
    assert all(w.closed for w in made[2:])  # both processes of the failed start are closed


def test_every_configuration_is_prepared_once_in_the_background(monkeypatch):
    """One preparing pass for the group, in its own thread, kept across builds (keep=True), closed
    before anything loads; a configuration whose preparing failed raises at its own turn only."""
    import threading

    from quantperf import scheduler
    from quantperf.experiments.shared import _Preparing

    calls, closed = [], []

    def prepare(spec, model_options, python=None, env=None, keep=False):
        calls.append((spec.backend, keep, threading.current_thread().name))
        if spec.backend == "fake-int8":
            raise RuntimeError("export failed")
        return {"built": True}

    monkeypatch.setattr(scheduler, "prepare_in_process", prepare)
    monkeypatch.setattr(scheduler, "close_preparers", lambda: closed.append(True))
    fp16, int8 = _spec("fake-fp16"), _spec("fake-int8")
    preparing = _Preparing([fp16, int8], Sides(), {})
    phases: dict = {}
    preparing.wait(fp16, phases)
    with pytest.raises(RuntimeError, match="export failed"):
        preparing.wait(int8, {})
    preparing.close()
    # side A and side B share an environment here: one preparing per configuration, not per side
    assert [(b, k) for b, k, _ in calls] == [("fake-fp16", True), ("fake-int8", True)]
    assert all(name.startswith("quantperf-prepare") for _, _, name in calls)
    assert closed == [True] and "prepare" in phases and preparing.seconds is not None


def test_a_pairs_processes_are_closed_side_by_side():
    """close_workers waits for both interpreters' exits at once (a barrier both closes must reach),
    empties the dict, and one failing close does not keep the other open."""
    import threading

    from quantperf.experiments.ahead import close_workers

    barrier = threading.Barrier(2, timeout=20)

    class Slow:
        def __init__(self, fails=False):
            self.fails, self.closed = fails, False

        def close(self):
            barrier.wait()  # both closes must be under way at the same time
            self.closed = True
            if self.fails:
                raise RuntimeError("already gone")

    pair = {"A": Slow(fails=True), "B": Slow()}
    both = list(pair.values())
    close_workers(pair)
    assert pair == {} and all(w.closed for w in both)


def test_a_pair_builds_at_once_and_warms_up_one_side_at_a_time(monkeypatch):
    """_measure_in: both sides build their warm-up's untimed work at once (a barrier both builds must
    reach), then warm up one after the other, the pair's first side first (a warm-up times: the copy
    bandwidth, each walk's replays), or at once where the warm-up times nothing (generation's); a
    side whose build crashed fails that side, named."""
    import threading

    from quantperf import scheduler
    from quantperf.experiments import shared
    from quantperf.experiments.upgrade import PairRecord, SideFailed

    barrier = threading.Barrier(2, timeout=20)
    events: list[str] = []

    class Worker:
        def __init__(self, name, broken=False, times=True):
            self.name, self.broken, self.times = name, broken, times

        def configure(self, **kw):
            events.append(f"configure {self.name} {sorted(kw)}")

        def build(self):
            barrier.wait()  # both builds must be under way at the same time
            if self.broken:
                raise RuntimeError("capture failed hard")
            return {"status": "ok", "build_s": 0.1, "warmup_times": self.times}

        def warmup(self):
            if not self.times:
                barrier.wait()  # warm-ups that time nothing run at once
            events.append(f"warmup {self.name}")
            return {"status": "ok", "warmup_s": 0.2}

        def unload(self):
            return {}

        def close(self):
            events.append(f"close {self.name}")

    def opened(spec, worker=None, **kw):
        side = scheduler.Side(spec, worker)
        side.info = {"status": "ok", "identity": {}}
        return side

    class Ready:
        def wait(self, spec, phases):
            pass

    monkeypatch.setattr(scheduler, "open_side", opened)
    monkeypatch.setattr(shared, "measure_blocks", lambda *a, **kw: events.append("blocks"))
    spec = RunSpec("fake:small", "fake-fp16", "cuda", "kernel", WORKLOAD)  # side by side on a GPU only

    def run(workers, first="B"):
        return shared._measure_in(spec, workers, Sides(), 1, 1, record=PairRecord(1, first), keep={},
                                  preparing=Ready(), phases={}, environment=None, profile=None, model_options={})

    assert run({"A": Worker("A"), "B": Worker("B")}) is None
    assert events[2:] == ["warmup B", "warmup A", "blocks"]
    assert all(e.endswith("['lm_head', 'sample_budget_ms', 'shapes']") for e in events[:2])
    barrier.reset()
    with pytest.raises(SideFailed) as failed:
        run({"A": Worker("A", broken=True), "B": Worker("B")}, first="A")
    assert failed.value.side == "A"
    assert "pair 2: error: crashed building its warm-up: RuntimeError: capture failed hard" in str(failed.value)
    barrier.reset()
    events.clear()
    assert run({"A": Worker("A", times=False), "B": Worker("B", times=False)}) is None
    assert sorted(events[2:4]) == ["warmup A", "warmup B"] and events[4:] == ["blocks"]


def test_a_pair_per_configuration_opens_both_sides_at_once_once_both_are_prepared(monkeypatch):
    """QUANTPERF_AB_SHARE=off (a fresh pair per configuration): pair 1 opens its sides one after the
    other (each prepares its configuration once), every later pair opens both at once
    (shared.open_both: loads and warm-ups side by side where nothing is timed); same verdict."""
    from quantperf.experiments import shared
    from quantperf.experiments.upgrade import check_config

    monkeypatch.setenv("QUANTPERF_TEST_BACKENDS", "1")
    monkeypatch.setenv(SHARE_ENV, "off")
    calls: list[int] = []
    real = shared.open_both
    monkeypatch.setattr(shared, "open_both", lambda spec, workers, sides, index, *a, **kw:
                        calls.append(index) or real(spec, workers, sides, index, *a, **kw))
    check, _ = check_config(_spec("fake-fp16"), Sides(), pairs=3, blocks=1, profile="cpu-test")
    assert check.status == Status.OK and check.verdict == Status.OK
    assert calls == [1, 2] and len(check.complete_pair_means) == 3


def test_only_generation_warm_ups_may_run_side_by_side(model_cache, monkeypatch):
    """Scenario.warmup_times: kernel mode's warm-up times (copy bandwidth, replays); generation's
    does not, unless a delay is injected (its GPU sleep is calibrated by a timing)."""
    from quantperf.workers import LocalWorker

    monkeypatch.delenv("QUANTPERF_INJECT_DELAY_MS", raising=False)
    for mode, times in (("eager", False), ("kernel", True)):
        w = LocalWorker(RunSpec("synthetic:llama-tiny", "torch-fp32", "cpu", mode, WORKLOAD))
        try:
            assert w.load()["status"] == "ok"
            assert w.build()["warmup_times"] is times
            if mode == "eager":
                w.configure(inject_ms=1.0)
                assert w.build()["warmup_times"] is True
        finally:
            w.close()

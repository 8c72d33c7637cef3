"""Shared process pairs (quantperf.experiments.shared): one fresh pair of processes hosts every
configuration of a group in turn; the pair is still the unit of replication. Driven with the fake
backends (simulated clock) with QUANTPERF_AB_SHARE naming their mode, and a slowdown injected into
side B's environment only."""

from __future__ import annotations

import os

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


def test_only_an_undecided_configuration_takes_the_further_pairs(monkeypatch):
    """Planned looks on shared pairs: a configuration decided at its first look leaves the pairs;
    an inconclusive one (a tolerance no A/A can show) takes one more pair per look, up to the last."""
    monkeypatch.setenv("QUANTPERF_TEST_BACKENDS", "1")
    specs = [_spec("fake-fp16"), _spec("fake-int8")]
    tol = {"fake-fp16": 1e-4, "fake-int8": 0.05}
    out = check_all(specs, Sides(env_b={"QUANTPERF_INJECT_DELAY_MS": "fake-int8=0.6"}),
                    tolerance_of=lambda s: (tol[s.backend], "configured"), share=("eager",), pairs=3, blocks=2,
                    max_blocks=10, alpha=0.05, profile="cpu-test")
    (fp16, _), (int8, _) = out
    assert (int8.verdict, int8.looks_used, len(int8.pairs)) == (Status.REGRESSED, 1, 3)
    assert (fp16.verdict, fp16.looks_planned, fp16.looks_used, len(fp16.pairs)) == (Status.INCONCLUSIVE, 3, 3, 5)
    assert fp16.pairs[3].pids != fp16.pairs[2].pids and fp16.pairs[2].pids == int8.pairs[2].pids

"""Where the time went (quantperf/phases.py): every measured configuration records its phases,
the session summary and the upgrade report add them up, and the upgrade check's overlap
(quantperf/experiments/ahead.py) keeps one fresh process pair per replicate, in ABBA order, and
reports a process started ahead that dies instead of hanging on it. Behaviour, never speed."""

import time

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
    for happened in ("start", "load", "warmup", "measure"):
        assert phases[happened] > 0, happened
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


def _counting(monkeypatch):
    spawned = []
    real = workers.open_worker

    def counted(*args, **kwargs):
        w = real(*args, **kwargs)
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

    def dying(spec, sides, model_options, phases, backends=None):
        pair = real(spec, sides, model_options, phases, backends)
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

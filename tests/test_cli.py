"""The command line: one clear line per bad input while the rest of the run continues."""

import json
import subprocess
import sys


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "quantperf", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_profile_prints_the_profile_first():
    out = run_cli("profile", "--device", "cpu")
    assert out.returncode == 0 and out.stdout.startswith("profile: cpu-")
    assert json.loads(out.stdout.split("\n", 1)[1])["packages"]["torch"]


def test_bad_names_give_one_line_each_and_the_run_continues(model_cache, tmp_path):
    import os

    env = dict(os.environ, QUANTPERF_CACHE=model_cache)
    out = run_cli("run", "--model", "synthetic:llama-tiny", "synthetic:llama-99b", "--backend", "bnb-int3",
                  "torch-fp32",
                  "--device", "cpu", "--rounds", "2", "--new-tokens", "4", "--prompt-tokens", "8",
                  "--out", str(tmp_path / "r.jsonl"), env=env)
    lines = out.stderr.strip().splitlines()
    assert any("llama-tiny-bnb-int3" in l and "unknown backend 'bnb-int3'" in l for l in lines), out.stderr
    assert any("llama-99b-torch-fp32" in l and "unknown synthetic shape" in l for l in lines), out.stderr
    assert any(l.startswith("llama-tiny-torch-fp32-cpu") and "tok/s" in l for l in lines), out.stderr
    assert out.returncode == 1  # errors were reported
    recorded = [json.loads(l) for l in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recorded].count("ok") == 1 and len(recorded) == 4


def test_gate_replays_stored_results(tmp_path):
    from quantperf.results import Metric, ResultLog, RunResult
    from quantperf.spec import RunSpec, Workload

    def res(samples):
        return RunResult(spec=RunSpec("synthetic:llama-1b", "bnb-int8", "cuda", "eager", Workload()),
                         profile="nvidia-x",
                         metrics={"decode_tokens_per_s": Metric.of("decode_tokens_per_s", samples)},
                         backend_identity={"t": 6.0}, timestamp="2026-11-26T00:00:00+00:00")

    ResultLog(tmp_path / "base.jsonl").append(res([100, 101, 99, 100.5, 99.5]))
    ResultLog(tmp_path / "base2.jsonl").append(res([98, 99, 97, 98.5, 97.5]))
    ResultLog(tmp_path / "base3.jsonl").append(res([101, 102, 100, 101.5, 100.5]))
    ResultLog(tmp_path / "slow.jsonl").append(res([70, 71, 69, 70.5, 69.5]))
    assert run_cli("gate", str(tmp_path / "slow.jsonl"), "--baselines",
                   str(tmp_path / "bl")).stdout.startswith("SKIPPED")
    # one recorded run: the run-to-run noise is unknown, so the verdict is inconclusive, not a pass
    assert run_cli("gate", str(tmp_path / "base.jsonl"), "--baselines", str(tmp_path / "bl"),
                   "--record").returncode == 0
    once = run_cli("gate", str(tmp_path / "slow.jsonl"), "--baselines", str(tmp_path / "bl"))
    assert once.returncode == 0 and "INCONCLUSIVE" in once.stdout and "noise floor unknown" in once.stdout
    for more in ("base2.jsonl", "base3.jsonl"):
        assert run_cli("gate", str(tmp_path / more), "--baselines", str(tmp_path / "bl"), "--record").returncode == 0
    out = run_cli("gate", str(tmp_path / "slow.jsonl"), "--baselines", str(tmp_path / "bl"))
    assert out.returncode == 1 and "REGRESSED llama-1b-bnb-int8-cuda-bs1-eager [nvidia-x]" in out.stdout


def test_gate_names_a_missing_results_file(tmp_path):
    out = run_cli("gate", str(tmp_path / "nope.jsonl"), "--baselines", str(tmp_path / "bl"))
    assert out.returncode == 2 and "nope.jsonl: no such results file" in out.stderr
    assert not (tmp_path / "bl").exists()


def test_sensitivity_measures_then_re_evaluates_at_another_tolerance(tmp_path):
    """The noise experiment end to end on the fake backend: an injected 10% slowdown, A/A side,
    ablation variants; the stored raw data re-evaluates without measuring."""
    raw = tmp_path / "exp.json"
    out = run_cli("sensitivity", "--model", "fake:small", "--backend", "fake-fp16", "--device", "cpu",
                  "--processes", "4", "--rounds", "3", "--prompt-tokens", "8", "--new-tokens", "12",
                  "--slowdowns", "0.1", "--variants", "gc-on", "--isolation", "inprocess", "--out", str(raw))
    assert out.returncode == 0, out.stderr
    assert "process 4/4: clean decode" in out.stderr
    table = out.stdout
    assert "4 processes x 3 rounds per side, tolerance 5%" in table
    for side in ("clean", "clean-b", "slow-10%", "gc-on"):
        assert f"\n{side} " in table
    data = json.loads(raw.read_text())
    assert data["delays_ms"]["slow-10%"] > 0 and len(data["processes"]) == 4
    again = run_cli("sensitivity", "--from", str(raw), "--tolerance", "speed:50%")
    assert again.returncode == 0 and "tolerance 50%" in again.stdout
    slow_row = next(l for l in again.stdout.splitlines() if l.startswith("slow-10%"))
    assert slow_row.split()[-2:] == ["0/4", "0/4"]  # 10% is inside a 50% tolerance


def test_sensitivity_names_a_bad_stored_experiment(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"processes": []')
    out = run_cli("sensitivity", "--from", str(bad))
    assert out.returncode == 2 and "x.json: not valid JSON" in out.stderr
    out = run_cli("sensitivity", "--from", str(tmp_path / "none.json"))
    assert out.returncode == 2 and "none.json: no such file" in out.stderr

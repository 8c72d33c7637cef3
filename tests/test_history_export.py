"""`quantperf export`: github-action-benchmark custom JSON and Bencher BMF from a results file or
a summary, intervals included, valid against each format's documented shape; and the history
commands end to end (add, baseline, report)."""

import json
from pathlib import Path

import jsonschema
import pytest
from test_history_changepoints import CONFIG, synthetic_results

from quantperf.cli import main
from quantperf.report.export import (
    figures_from_summary,
    load_figures,
    measure_slug,
    to_bencher,
    to_github_action_benchmark,
)
from quantperf.results import ResultLog
from quantperf.summary import ConfigOutcome, MetricVerdict, SessionSummary

SCHEMAS = Path(__file__).parent / "schemas"
GAB = json.loads((SCHEMAS / "github-action-benchmark-custom.schema.json").read_text())
BMF = json.loads((SCHEMAS / "bencher-bmf.schema.json").read_text())


@pytest.fixture
def results_file(tmp_path):
    log = ResultLog(tmp_path / "results.jsonl")
    for r in synthetic_results(n=1)[0]:
        log.append(r)
    return tmp_path / "results.jsonl"


def test_the_schemas_can_fail():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "x", "unit": "ms", "value": "12"}], GAB)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"bench": {"latency": {"lower_value": 1.0}}}, BMF)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"bench": {"m" * 65: {"value": 1.0}}}, BMF)


def test_a_results_file_exports_to_bencher_with_the_interval_of_each_median(results_file):
    bmf = to_bencher(load_figures(results_file))
    jsonschema.validate(bmf, BMF)
    fig = bmf[f"cpu-test/{CONFIG}"]
    assert set(fig) == {"decode-tokens-per-s", "prefill-ms"}
    for m in fig.values():
        assert m["lower_value"] <= m["value"] <= m["upper_value"]
    assert measure_slug("kernel_decode_us_per_layer") == "kernel-decode-us-per-layer"


def test_github_action_benchmark_gets_one_file_per_direction(results_file):
    figures = load_figures(results_file)
    bigger, smaller = to_github_action_benchmark(figures, True), to_github_action_benchmark(figures, False)
    for doc in (bigger, smaller):
        jsonschema.validate(doc, GAB)
    assert {e["name"].split()[-1] for e in bigger} == {"decode_tokens_per_s"}
    assert {e["name"].split()[-1] for e in smaller} == {"prefill_ms"}
    assert all(e["range"].startswith("95% CI ") and "rounds: 7" in e["extra"] for e in bigger)
    assert {e["unit"] for e in bigger} == {"tok/s"} and {e["unit"] for e in smaller} == {"ms"}


def test_a_summary_exports_the_gated_value_with_the_gate_interval_in_its_units(tmp_path):
    summary = SessionSummary(profiles={"cpu": "cpu-test"}, configs=[ConfigOutcome(
        f"{CONFIG}:speed", CONFIG, ["speed"], "regressed", verdicts=[
            MetricVerdict("decode_tokens_per_s", "regressed", current=280.0, baseline=310.0, ratio=0.90,
                          ci=[0.85, 0.95], noise_floor=0.08)])])
    summary.write(tmp_path / "summary.json")
    (fig,) = load_figures(tmp_path / "summary.json")
    assert (fig.lower, fig.value, fig.upper) == pytest.approx((280 * 0.85 / 0.9, 280.0, 280 * 0.95 / 0.9))
    assert "gate: regressed" in fig.extra
    jsonschema.validate(to_bencher([fig]), BMF)
    jsonschema.validate(to_github_action_benchmark([fig], True), GAB)
    assert figures_from_summary({"profiles": {}, "configs": []}) == []


def test_the_export_command_writes_both_directions_and_refuses_what_it_cannot_read(results_file, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["export", str(results_file), "--format", "gab", "-o", str(out)]) == 0
    for name in ("bench-bigger-is-better.json", "bench-smaller-is-better.json"):
        jsonschema.validate(json.loads((tmp_path / name).read_text()), GAB)
    assert "customSmallerIsBetter" in capsys.readouterr().out
    assert main(["export", str(results_file), "--format", "bmf"]) == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), BMF)
    assert main(["export", str(results_file), "--format", "gab"]) == 2
    assert "give -o OUT" in capsys.readouterr().err
    bad = tmp_path / "other.json"
    bad.write_text("[1, 2]")
    assert main(["export", str(bad), "--format", "bmf"]) == 2
    assert "not a session summary" in capsys.readouterr().err


def test_the_history_commands_store_derive_and_report(tmp_path, capsys):
    store = tmp_path / "store"
    for i, results in enumerate(synthetic_results(n=12, shifts={6: 0.85}, torch_change_at=6)):
        log = ResultLog(tmp_path / f"night{i}" / "results.jsonl")
        for r in results:
            log.append(r)
        assert main(["history", "add", str(store), str(log.path), "--git-revision", f"rev{i}"]) == 0
    assert main(["history", "baseline", str(store), "--profile", "cpu-test", "-o", str(tmp_path / "b.json")]) == 0
    derived = json.loads((tmp_path / "b.json").read_text())
    assert len(derived["configs"][CONFIG]["metrics"]["decode_tokens_per_s"]["runs"]) == 12
    page = tmp_path / "trends.html"
    assert main(["history", "report", str(store), "--html", str(page)]) == 0
    text = page.read_text()
    assert text.count("<svg") == 6 and "torch 2.11.0 -&gt; 2.12.0" in text and "<script" not in text
    assert main(["history", "add", str(tmp_path / "git-store"), str(log.path), "--branch", "main"]) == 2
    assert "refusing" in capsys.readouterr().err


def test_the_history_commands_work_on_a_git_branch_and_push_it(tmp_path, capsys):
    import subprocess

    local, remote = tmp_path / "local.git", tmp_path / "remote.git"
    for repo in (local, remote):
        subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(repo)], check=True)
    for i, results in enumerate(synthetic_results(n=6)):
        log = ResultLog(tmp_path / f"night{i}" / "results.jsonl")
        for r in results:
            log.append(r)
        assert main(["history", "add", str(local), str(log.path), "--branch", "qp-history", "--push",
                     str(remote)]) == 0
    assert main(["history", "report", str(remote), "--branch", "qp-history", "--html", str(tmp_path / "t.html")]) == 0
    assert (tmp_path / "t.html").read_text().count("<svg") == 6
    assert main(["history", "add", str(tmp_path / "d"), str(log.path), "--push", "origin"]) == 2
    assert "--push needs --branch" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_a_schema_1_summary_exports_too(tmp_path):
    """Summaries written before schema 2 keep configurations in an object keyed `<config id>:<kinds>`."""
    doc = {"profiles": {"cuda": "nvidia-h100-80gb-hbm3"}, "configs": {
        "llama-125m-bnb-int8-cuda-bs1-eager:speed": {"status": "ok", "message": "", "verdicts": [
            {"metric": "decode_tokens_per_s", "status": "ok", "current": 50.0, "ratio": 1.01, "ci": [0.97, 1.05]}]},
        "quality:llama-125m-bnb-int8-cuda-bs1-eager:quality": {"status": "ok", "verdicts": [
            {"metric": "mean_kld", "status": "ok", "current": 0.002, "ratio": None, "ci": None}]}}}
    (tmp_path / "summary.json").write_text(json.dumps(doc))
    names = {f.benchmark for f in load_figures(tmp_path / "summary.json")}
    assert names == {"nvidia-h100-80gb-hbm3/llama-125m-bnb-int8-cuda-bs1-eager",
                     "nvidia-h100-80gb-hbm3/quality-llama-125m-bnb-int8-cuda-bs1-eager"}
    jsonschema.validate(to_bencher(load_figures(tmp_path / "summary.json")), BMF)

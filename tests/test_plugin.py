"""The pytest plugin end to end, with pytester and the deterministic fake backends."""

import json
from pathlib import Path

import pytest
import torch  # imported before pytester snapshots sys.modules: torch cannot be imported twice
from subrun import run_pytest

pytest_plugins = ["pytester"]
CUDA = torch.cuda.is_available()

MATRIX = """
[tier.cpu]
device = "cpu"
models = ["fake:small"]
backends = ["fake-fp16", "fake-int8"]
modes = ["eager"]
workload = { batch_size = 1, prompt_tokens = 8, new_tokens = 12, warmup_rounds = 1, rounds = 7 }

[tier.gpu]
device = "cuda"
models = ["synthetic:llama-1b"]
backends = ["torch-fp16"]
"""

TAKEAWAYS = """
[[claim]]
id = "fake-int8-slower-than-fp16"
sentence = "INT8 decodes slower than FP16."
metric = "decode_tokens_per_s"
relation = "lower"
device = "cpu"
profiles = ["cpu-*"]
a = { model = "fake:small", backend = "fake-fp16" }
b = { model = "fake:small", backend = "fake-int8" }
"""

# The plugin tests run the shipped benchmark file itself, not a copy of its logic.
SHIPPED_TESTS = (Path(__file__).resolve().parents[1] / "benchmarks" / "test_regression.py").read_text()


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.setenv("QUANTPERF_TEST_BACKENDS", "1")
    monkeypatch.delenv("QUANTPERF_INJECT_DELAY_MS", raising=False)
    pytester.makefile(".toml", matrix=MATRIX, takeaways=TAKEAWAYS)
    pytester.mkdir("baselines")
    pytester.makepyfile(test_bench=SHIPPED_TESTS)
    return pytester


# the shipped benchmark file uses no Hypothesis: its plugin stays out of the inner sessions (a second of imports each)
ARGS = ["--qp-matrix=matrix.toml", "--qp-takeaways=takeaways.toml", "--qp-baselines=baselines",
        "--qp-profile=cpu-test", "--qp-results=out/results.jsonl", "-p", "no:cacheprovider", "-W",
        "ignore::DeprecationWarning", "-p", "no:hypothesispytest"]


def run(p, *extra):
    return p.runpytest_subprocess(*ARGS, *extra)


def run_here(p, *extra):
    """`run` in this interpreter: for sessions that measure nothing (usage errors, help, collection,
    skips), where a fresh interpreter only adds its start-up."""
    return p.runpytest_inprocess(*ARGS, *extra)


def run_in(path: Path, *extra, env: dict | None = None) -> pytest.RunResult:
    """`run` for a module-scoped project (pytester's own is per test): the same arguments and
    environment, a fresh interpreter in `path`."""
    return run_pytest(path, *ARGS, *extra, env=env)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One project taken through the life of a baseline, each session in a fresh interpreter as
    users run them, for the tests below to read: recorded once, checked, recorded a second time
    (with --qp-report), checked with an injected slowdown, checked with the progress log on.
    What each step leaves on disk is kept as it was right after it."""
    d = tmp_path_factory.mktemp("recorded")
    (d / "matrix.toml").write_text(MATRIX)
    (d / "takeaways.toml").write_text(TAKEAWAYS)
    (d / "baselines").mkdir()
    (d / "test_bench.py").write_text(SHIPPED_TESTS)
    runs = {"record": run_in(d, "-m", "cpu", "--qp-record")}
    runs["baseline_after_record"] = json.loads((d / "baselines" / "cpu-test.json").read_text())
    runs["check"] = run_in(d, "-m", "cpu")
    runs["results_after_check"] = (d / "out" / "results.jsonl").read_text().splitlines()
    runs["rotated_after_check"] = len(list((d / "out").glob("results-*.jsonl")))
    runs["record_with_report"] = run_in(d, "-m", "cpu", "--qp-record", "--qp-report", "rep")
    # +3 ms/token on fake-fp16: 2 -> 5 ms/token, now slower than fake-int8 (3 ms/token)
    runs["injected"] = run_in(d, "-m", "cpu", env={"QUANTPERF_INJECT_DELAY_MS": "fake-fp16=3"})
    runs["progress_log"] = run_in(d, "-m", "cpu", "-k", "speed", env={"QUANTPERF_PROGRESS": "log"})
    runs["path"] = d
    return runs


def test_help_lists_prefixed_options_and_markers_are_strict_clean(pytester):
    result = pytester.runpytest_inprocess("--help")
    result.stdout.fnmatch_lines(["*--qp-record*", "*--qp-profile*", "*--qp-tolerance*", "*qp_baselines*"])
    pytester.makepyfile(test_m="""
        import pytest
        @pytest.mark.cpu
        @pytest.mark.quality
        @pytest.mark.takeaway
        @pytest.mark.slow
        def test_x():
            pass
        @pytest.mark.gpu
        def test_y():
            pass
    """)
    result = pytester.runpytest_inprocess("--strict-markers", "test_m.py")
    result.assert_outcomes(passed=2 if CUDA else 1, skipped=0 if CUDA else 1)


def test_gpu_tier_skips_with_one_clear_reason_without_cuda(project):
    if CUDA:
        pytest.skip("this machine has CUDA")
    result = run_here(project, "-m", "gpu", "-rs")
    result.stdout.fnmatch_lines(["*no CUDA device here: the gpu tier needs an NVIDIA GPU*"])
    result.assert_outcomes(skipped=2)


def test_no_baseline_skips_with_the_record_command_and_strict_fails(project):
    result = run_here(project, "-m", "cpu", "-k", "speed or memory", "-rs")
    result.stdout.fnmatch_lines(["*no baseline for small-fake-fp16-cpu-*--qp-record*"])
    result.assert_outcomes(skipped=4)
    assert not list(project.path.joinpath("baselines").iterdir()), "nothing is written without --qp-record"
    run_here(project, "-m", "cpu", "-k", "speed", "--qp-strict").assert_outcomes(failed=2)


def test_record_then_check_passes_and_takeaway_holds(recorded):
    rec = recorded["record"]
    rec.assert_outcomes(passed=5)
    rec.stdout.fnmatch_lines(["*recorded * baseline figure(s)*", "*small-fake-int8-cpu-*decode_tokens_per_s: new*"])
    data = recorded["baseline_after_record"]
    entry = data["configs"]["small-fake-fp16-cpu-bs1-p8-n12-eager"]
    assert len(entry["metrics"]["decode_tokens_per_s"]["samples"]) == 7 and "weight_mib" in entry["metrics"]
    assert entry["packages"]["torch"]
    check = recorded["check"]
    check.assert_outcomes(passed=5)
    check.stdout.fnmatch_lines(["*takeaways:*", "*fake-int8-slower-than-fp16*cpu-test*holds*"])
    # one baseline run: the run-to-run noise is unknown, so speed is inconclusive (a warning), not ok
    check.stdout.fnmatch_lines(["*INCONCLUSIVE small-fake-fp16-cpu-*noise floor unknown*"])
    # results were appended as each configuration finished; the recording session's log moved aside
    lines = recorded["results_after_check"]
    assert len(lines) == 2 and json.loads(lines[0])["status"] == "ok"
    assert recorded["rotated_after_check"] == 1


def test_a_claim_with_its_own_batch_measures_both_sides_at_that_batch(project):
    """A claim's batch_size makes its own configurations (bs2), measured for the claim alone
    beside the tier's bs1 ones, and the claim is judged on them."""
    project.makefile(".toml", takeaways=TAKEAWAYS + TAKEAWAYS.replace('id = "fake-int8-slower-than-fp16"',
                                                                      'id = "fake-int8-slower-at-bs2"\nbatch_size = 2'))
    result = run(project, "-m", "cpu and takeaway")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*fake-int8-slower-at-bs2*cpu-test*holds*"])
    lines = [json.loads(x) for x in project.path.joinpath("out", "results.jsonl").read_text().splitlines()]
    assert sorted(r["config_id"] for r in lines) == ["small-fake-fp16-cpu-bs1-p8-n12-eager",
                                                     "small-fake-fp16-cpu-bs2-p8-n12-eager",
                                                    "small-fake-int8-cpu-bs1-p8-n12-eager",
                                                    "small-fake-int8-cpu-bs2-p8-n12-eager"]


def test_injected_slowdown_flips_the_takeaway_and_regresses_speed(recorded):
    # two recorded runs (the gate needs the run-to-run noise), then +3 ms/token on fake-fp16
    for name in ("record", "record_with_report"):
        recorded[name].assert_outcomes(passed=5)
    result = recorded["injected"]
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines([
        "*REGRESSED small-fake-fp16-cpu-*decode_tokens_per_s*raw x0.*-> regressed*",
        "*FLIPPED fake-int8-slower-than-fp16 [[]cpu-test[]]: fake-int8/fake-fp16 decode tok/s = 1.*claimed < 1*",
    ])


def test_corrupt_baseline_fails_with_file_and_field(project):
    project.path.joinpath("baselines",
                          "cpu-test.json").write_text('{"schema": 1, "profile": "cpu-test", "configs": []}')
    result = run(project, "-m", "cpu", "-k", "speed")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*cpu-test.json: configs: input should be a valid dictionary*"])
    assert "During handling of the above exception" not in result.stdout.str()


def test_baseline_from_another_profile_is_not_used_and_is_reported(project):
    run(project, "-m", "cpu", "-k", "speed", "--qp-record", "--qp-profile=nvidia-tesla-t4")
    assert project.path.joinpath("baselines", "nvidia-tesla-t4.json").exists()
    result = run(project, "-m", "cpu", "-k", "speed", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*baselines exist for other profiles: nvidia-tesla-t4*not used*"])


def test_profile_hook_overrides_detection(project):
    project.makeconftest("""
        def pytest_quantperf_profile(config, device, detected):
            return "cpu-from-hook"
    """)
    args = [a for a in ARGS if not a.startswith("--qp-profile")]
    project.runpytest_subprocess(*args, "-m", "cpu", "-k", "speed", "--qp-record").assert_outcomes(passed=2)
    assert project.path.joinpath("baselines", "cpu-from-hook.json").exists()


def test_matrix_override_from_the_command_line(project):
    result = run_here(project, "-m", "cpu", "--collect-only", "-q", "--qp-backends=fake-int8", "-k", "speed")
    result.stdout.fnmatch_lines(["*test_speed[[]small-fake-int8-cpu-bs1-p8-n12-eager[]]*"])
    assert "fake-fp16-cpu" not in result.stdout.str().split("test_takeaway")[0].split("test_speed")[1]


def test_repeatability_benchmark_reports_noise_and_fails_a_missed_target(project):
    project.path.joinpath("matrix.toml").write_text(MATRIX.replace('[tier.gpu]', '''[tier.cpu.noise]
configs = ["small-fake-fp16-cpu-bs1-p8-n12-eager"]
cv_within_max = { eager = 0.0000001 }

[tier.gpu]'''))
    project.makepyfile(test_noise="""
        from quantperf.plugin import run_check

        def test_repeatability(qp_session, qp_noise_config, request):
            spec, tier = qp_noise_config
            run_check(qp_session.repeatability, spec, request.config.getoption("--qp-noise-runs"),
                      tier.noise_targets.get(spec.mode))
    """)
    result = run(project, "-m", "cpu", "test_noise.py", "--qp-noise-runs", "2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*NOISY small-fake-fp16-cpu-bs1-p8-n12-eager [[]cpu-test[]]: decode_tokens_per_s "
                                 "within-run CV*",
                                 "*repeatability (fresh process per run):*"])
    summary = json.loads(project.path.joinpath("out", "summary.json").read_text())
    assert summary["repeatability"][0]["runs"] == 2


def test_qp_report_writes_the_html_and_markdown_report_of_the_session(recorded):
    pytest.importorskip("matplotlib")
    result = recorded["record_with_report"]
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*measuring small-fake-*: load, one-time builds, warm-up, rounds",
                                 "*measured small-fake-*: decode * tok/s (CV *%, 7 rounds), prefill * ms*",
                                 "*report: *rep/report.html*rep/report.md*"])
    page = recorded["path"].joinpath("rep", "report.html").read_text()
    assert "<h2>Decode speed</h2>" in page and "data:image/png;base64," in page
    md = recorded["path"].joinpath("rep", "report.md").read_text()
    assert "fake-int8-slower-than-fp16" in md and "small-fake-fp16" in md


@pytest.mark.parametrize("args, message", [
    (["--qp-backends", "torch-fp33"],
     "*ERROR: quantperf: pytest options: --qp-backends: unknown backend 'torch-fp33'*"),
    (["--qp-tolerance", "speed:abc"],
     "*ERROR: quantperf: --qp-tolerance: tolerance 'speed:abc': 'abc' is not a number*"),
    (["--qp-alpha", "2"],
     "*ERROR: quantperf: --qp-alpha 2.0: the significance level must lie strictly between 0 and 1*"),
])
def test_a_bad_option_is_one_clean_usage_line(project, args, message):
    result = run_here(project, "-m", "cpu", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert len((result.stdout.str() + result.stderr.str()).strip().splitlines()) <= 3


def test_a_published_profile_judges_takeaways_from_the_first_run_and_keeps_its_source(project):
    """A profile whose baseline holds only published verdicts (like baselines/nvidia-tesla-t4.json):
    the first run is judged against them, says where the expectation came from, and recording
    replaces the verdict while keeping the published entry."""
    published = {"source": "a published study", "figures": "INT8 1.2x FP16", "disagrees": "another source: 0.6x"}
    project.path.joinpath("baselines", "cpu-test.json").write_text(json.dumps({
        "schema": 2, "profile": "cpu-test", "provenance": {"kind": "published"}, "configs": {},
        "takeaways": {"fake-int8-slower-than-fp16": {"verdict": "flipped", "ratio": 1.2, "ci": [1.2, 1.2],
                                                     "packages": {}, "recorded_at": None, "published": published}}}))
    result = run(project, "-m", "cpu", "-k", "takeaway")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FLIPPED fake-int8-slower-than-fp16 [[]cpu-test[]]*expected flipped, got holds*"
                                 "expected verdict from published figures (a published study: INT8 1.2x FP16)*"
                                 "disagreeing source: another source: 0.6x*"])
    rec = run(project, "-m", "cpu", "-k", "takeaway", "--qp-record")
    rec.assert_outcomes(passed=1)
    entry = json.loads(project.path.joinpath("baselines", "cpu-test.json").read_text())["takeaways"][
        "fake-int8-slower-than-fp16"]
    assert entry["verdict"] == "holds" and entry["recorded_at"] and entry["published"] == published


def test_the_shipped_t4_profile_is_published_and_valid():
    from quantperf.baselines import BaselineStore

    store = BaselineStore(Path(__file__).resolve().parents[1] / "baselines", "nvidia-tesla-t4")
    assert store.data["provenance"]["kind"] == "published" and store.data["configs"] == {}
    for cid in ("small-int8-slower-than-fp16", "medium-int4-faster-than-fp16", "medium-int4-75pct-smaller"):
        entry = store.takeaway(cid)
        assert entry["verdict"] in ("holds", "flipped") and entry["published"]["source"] == "seed"
    assert "0.64x" in store.takeaway("medium-int4-faster-than-fp16")["published"]["disagrees"]


SHARDED_MATRIX = MATRIX.replace('models = ["fake:small"]', 'models = ["fake:small", "fake:medium"]', 1)


def test_sharded_over_xdist_workers_records_checks_and_merges_one_summary(project):
    """`-n 2`: each shard (device, model, mode) runs on one worker (one GPU each on a GPU host);
    recording from both workers at once loses nothing; one merged results.jsonl and summary."""
    pytest.importorskip("xdist")
    project.makefile(".toml", matrix=SHARDED_MATRIX)
    rec = run(project, "-m", "cpu", "-k", "speed or memory or takeaway", "-n", "2", "--qp-record")
    rec.assert_outcomes(passed=9)
    baseline = json.loads(project.path.joinpath("baselines", "cpu-test.json").read_text())
    assert sorted(baseline["configs"]) == ["medium-fake-fp16-cpu-bs1-p8-n12-eager",
                                           "medium-fake-int8-cpu-bs1-p8-n12-eager",
                                           "small-fake-fp16-cpu-bs1-p8-n12-eager",
                                           "small-fake-int8-cpu-bs1-p8-n12-eager"]
    assert "fake-int8-slower-than-fp16" in baseline["takeaways"]
    out = project.path / "out"
    assert not list(out.glob("*-gw*")), "the workers' files are merged away"
    check = run(project, "-m", "cpu", "-k", "speed or memory or takeaway", "-n", "2")
    check.assert_outcomes(passed=9)
    check.stdout.fnmatch_lines(["*quantperf (2 workers)*", "*results: *results.jsonl*"])
    summary = json.loads((out / "summary.json").read_text())
    assert {c["config_id"] for c in summary["configs"]} >= {
        "small-fake-fp16-cpu-bs1-p8-n12-eager", "medium-fake-int8-cpu-bs1-p8-n12-eager"}
    assert [c["id"] for c in summary["claims"]] == ["fake-int8-slower-than-fp16"]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4, "each configuration measured once, by the worker of its shard"


def test_shards_go_to_the_least_loaded_worker_the_same_way_everywhere():
    from quantperf.shards import assign_shards

    keys = (["cuda-llama-1b-kernel"] * 4 + ["cuda-llama-125m-eager"] * 3 + ["cuda-llama-8b-kernel"] * 2
            + ["quality-cuda-fixture"])
    owner = assign_shards(keys, 2)
    assert owner == assign_shards(list(reversed(keys)), 2)
    load = [sum(1 for k in keys if owner[k] == w) for w in (0, 1)]
    assert sorted(load) == [5, 5]
    assert set(assign_shards(keys, 8).values()) == {0, 1, 2, 3}  # more workers than shards: some idle


def test_shards_are_balanced_by_estimated_seconds_and_split_by_batch():
    """A shard's weight is the estimated time of the configurations its tests measure, each once:
    one 8B shard outweighs many small ones, and a claim at its own batch is a shard of its own."""
    from quantperf.shards import SHARD_CONFIG_S, assign_shards, shard_of, spec_cost
    from quantperf.spec import RunSpec, Workload

    assert spec_cost("synthetic:llama-8b") > 5 * spec_cost("synthetic:llama-125m") > 5 * SHARD_CONFIG_S / 2
    assert spec_cost("fixture") == SHARD_CONFIG_S and spec_cost("hf:org/name") == spec_cost("/ckpt/m")
    big = [RunSpec("synthetic:llama-8b", b, "cuda", "kernel", Workload()) for b in ("torch-fp16", "bnb-nf4",
                                                                                    "torch-bf16")]
    bs8 = RunSpec("synthetic:llama-8b", "torch-bf16", "cuda", "kernel", Workload(batch_size=8))
    small = [RunSpec(m, b, "cuda", "eager", Workload()) for m in ("synthetic:llama-125m", "synthetic:llama-1b")
             for b in ("torch-fp16", "bnb-int8", "bnb-nf4")]
    assert shard_of(bs8) != shard_of(big[0]) and shard_of(big[0]) == shard_of(big[1])
    items = [(shard_of(s), {s.id: spec_cost(s.model)}) for s in big + small + [bs8]]
    items += [(shard_of(s), {s.id: spec_cost(s.model)}) for s in big]  # memory tests: measured once already
    keys, costs = [k for k, _ in items], [c for _, c in items]
    owner = assign_shards(keys, 2, costs)
    assert owner == assign_shards(list(reversed(keys)), 2, list(reversed(costs)))
    assert {w for k, w in owner.items() if k != shard_of(big[0])} == {1 - owner[shard_of(big[0])]}
    # by test count the 8B shard (6 tests) would have had company; by time it is alone
    count = assign_shards(keys, 2)
    assert sum(1 for k in count if count[k] == count[shard_of(big[0])]) > 1


def test_progress_log_lines_reach_a_plain_log(recorded):
    """QUANTPERF_PROGRESS=log: each long step's start and end, timestamped, in a log that is not a
    terminal (an unattended GPU runner); without it the log has none."""
    import re

    quiet = recorded["record"]  # recording measures (no baseline yet)
    assert quiet.ret == 0 and not any(re.match(r"  \[\d\d:\d\d:\d\d\] ",
                                               line) for line in quiet.outlines), quiet.outlines
    result = recorded["progress_log"]
    result.assert_outcomes(passed=2)
    result.stdout.re_match_lines([r"  \[\d\d:\d\d:\d\d\] small fake-fp16 eager: load \.\.\.$",
                                  r"  \[\d\d:\d\d:\d\d\] small fake-fp16 eager: load: done in \d+\.\d s$"])

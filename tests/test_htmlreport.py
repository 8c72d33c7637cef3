"""The HTML/markdown report and `merge`, rendered from stored results and summaries (no GPU)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quantperf.report.html import SECTIONS, load, render_html, render_markdown, sections, takeaway_matrix
from quantperf.results import Metric, RunResult
from quantperf.spec import RunSpec, Workload
from quantperf.summary import ClaimOutcome, ConfigOutcome, SessionSummary

ROOT = Path(__file__).resolve().parent.parent
W = Workload(batch_size=1, prompt_tokens=16, new_tokens=8, warmup_rounds=1, rounds=3)


def _gen(profile, model, backend, tok_s, weight, mode="eager"):
    m = {"decode_tokens_per_s": Metric.of("decode_tokens_per_s", [tok_s * f for f in (0.98, 1.0, 1.02)]),
         "prefill_ms": Metric.of("prefill_ms", [10.0, 10.5, 10.2]), "weight_mib": Metric.of("weight_mib", [weight]),
         "peak_allocated_mib": Metric.of("peak_allocated_mib", [weight * 1.1])}
    return RunResult(spec=RunSpec(model, backend, "cuda", mode, W), profile=profile, metrics=m)


def _kernel(profile, backend, us, method="cuda-graph"):
    types = {f"{shape}:{t}": {"us_per_call": us / 7, "method": method, "pct_copy": 0.5}
             for shape in ("decode", "prefill") for t in ("q_proj", "down_proj", "lm_head")}
    m = {"kernel_decode_us_per_layer": Metric.of("kernel_decode_us_per_layer", [us, us * 1.001, us * 0.999]),
         "kernel_prefill_us_per_layer": Metric.of("kernel_prefill_us_per_layer", [2 * us] * 3)}
    return RunResult(spec=RunSpec("synthetic:llama-1b", backend, "cuda", "kernel", W), profile=profile, metrics=m,
                     figures={"kernel": {"types": types, "copy_gbps": 4270.0}})


def _quality(profile, backend, kld, top1):
    m = {"mean_kld": Metric.of("mean_kld", [kld]), "top1_agreement": Metric.of("top1_agreement", [top1]),
         "ppl": Metric.of("ppl", [64.8])}
    return RunResult(spec=RunSpec("fixture", backend, "cuda", "eager", W), profile=profile, metrics=m,
                     quality={"reference_backend": "torch-fp16"})


def _claim(cid, profile, verdict, ratio):
    return ClaimOutcome(id=cid, profile=profile, verdict=verdict, expected=verdict, ratio=ratio,
                        ci=[ratio * 0.9, ratio * 1.1], p_value=0.01, message="")


@pytest.fixture
def stored(tmp_path):
    runs = {
        "nvidia-h200": [_gen("nvidia-h200", "synthetic:llama-125m", "torch-fp16", 90.0, 256.0),
                        _gen("nvidia-h200", "synthetic:llama-125m", "bnb-int8", 25.0, 175.0),
                        _kernel("nvidia-h200", "torch-fp16", 50.5),
                        _kernel("nvidia-h200", "bnb-int8", 1288.0, "eager-timed"),
                        _quality("nvidia-h200", "bnb-nf4", 1.3e-3, 0.963),
                         _quality("nvidia-h200", "bnb-int8", 5e-5, 0.992)],
        "nvidia-h100-80gb-hbm3": [_gen("nvidia-h100-80gb-hbm3", "synthetic:llama-125m", "torch-fp16", 78.0, 256.0),
                                  _gen("nvidia-h100-80gb-hbm3", "synthetic:llama-125m", "bnb-int8", 24.0, 175.0)],
    }
    claims = {"nvidia-h200": [_claim("small-int8-slower-than-fp16", "nvidia-h200", "holds", 0.3),
                              _claim("small-int8-saves-little-memory", "nvidia-h200", "flipped", 0.685)],
              "nvidia-h100-80gb-hbm3": [_claim("small-int8-slower-than-fp16", "nvidia-h100-80gb-hbm3", "holds", 0.32)]}
    paths = []
    for profile, results in runs.items():
        res = tmp_path / f"{profile}-results.jsonl"
        res.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in results))
        summary = SessionSummary(profiles={"cuda": profile}, claims=claims[profile],
                                 configs=[ConfigOutcome(key="k", config_id="c", kinds=["speed"], status="ok")],
                                 notes=["this machine runs 3% faster than when the baseline was recorded"])
        summary.write(tmp_path / f"{profile}-summary.json")
        paths += [res, tmp_path / f"{profile}-summary.json"]
    return paths


def test_the_report_has_every_section_embedded_plots_and_the_summarys_verdicts(stored):
    pytest.importorskip("matplotlib")
    data = load(stored)
    page = render_html(data)
    for name in SECTIONS:
        if name in ("Upgrade check", "Noise"):
            continue  # only with an upgrade-check report / noise lines
        assert f"<h2>{name}</h2>" in page, name
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched at view time
    plots = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    titles = {t for t, _ in plots}
    assert {"Decode speed, llama-125m on nvidia-h200", "Kernel time, llama-1b on nvidia-h200",
            "Memory, llama-125m on nvidia-h200", "Speed against memory, llama-125m on nvidia-h200",
            "Quality against bits on nvidia-h200"} <= titles
    assert all(len(b) > 1000 for _, b in plots)
    # the takeaway matrix is the summaries' verdicts, cell by cell
    claims, profiles, cells = takeaway_matrix(data)
    assert cells[("small-int8-saves-little-memory", "nvidia-h200")]["verdict"] == "flipped"
    assert ("small-int8-saves-little-memory", "nvidia-h100-80gb-hbm3") not in cells
    table = page[page.index("<h2>Takeaways</h2>"):]
    assert "flipped 0.685 [0.617, 0.754]" in table and "not measured" in table
    assert "eager-timed" in page  # the timing method is shown beside a kernel figure


def test_merge_builds_one_matrix_across_profiles_and_markdown_has_the_tables(stored, tmp_path):
    out = subprocess.run([sys.executable, "-m", "quantperf", "merge", *map(str, stored), "--baselines", str(tmp_path),
                          "--html", str(tmp_path / "m.html"), "--markdown", str(tmp_path / "m.md")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "m.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| llama-125m torch-fp16 eager"))
    assert "90.0 tok/s" in row and "78.0 tok/s" in row
    header = next(line for line in md.splitlines() if line.startswith("| configuration |"))
    assert "nvidia-h200" in header and "nvidia-h100-80gb-hbm3" in header
    assert "## Takeaways" in md and "holds 0.3" in md
    assert (tmp_path / "m.html").read_text().startswith("<!doctype html>")


def test_the_summary_table_has_one_row_per_session_summary_and_counts_only_real_flips(stored, tmp_path):
    """Several summaries of one profile are told apart by their file; a claim measured for the
    first time on a profile (no expected verdict yet) is counted among its claims, not as a flip."""
    first = SessionSummary(profiles={"cuda": "nvidia-h200"}, claims=[
        ClaimOutcome(id="fp8-weights-faster-than-bf16-at-decode", profile="nvidia-h200", verdict="flipped",
                     expected=None, ratio=13.3, ci=[13.2, 13.3], p_value=0.06, message=""),
        ClaimOutcome(id="small-int8-slower-than-fp16", profile="nvidia-h200", verdict="inconclusive",
                     expected="holds", ratio=0.9, ci=[0.5, 1.2], p_value=0.4, message="")])
    first.write(tmp_path / "large-summary.json")
    assert first.flips == []
    data = load([*stored, tmp_path / "large-summary.json"])
    header, rows = sections(data)["Summary"]["tables"][0]
    assert header[:2] == ["session summary", "profiles"]
    by_source = {Path(r[0]).name: dict(zip(header, r)) for r in rows}
    large = by_source["large-summary.json"]
    assert (large["profiles"], large["claims"], large["flipped claims"],
            large["inconclusive"]) == ("nvidia-h200", 2, 0, 1)
    assert by_source["nvidia-h200-summary.json"]["flipped claims"] == 0  # "flipped" was the expected verdict there


def test_bad_report_input_is_one_clear_line(tmp_path):
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"spec": {"model": "m"}}\n')
    out = subprocess.run([sys.executable, "-m", "quantperf", "report", str(bad)], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 2 and "r.jsonl:1: not a quantperf result" in out.stderr and "Traceback" not in out.stderr
    other = tmp_path / "x.json"
    other.write_text('{"hello": 1}')
    out = subprocess.run([sys.executable, "-m", "quantperf", "report", str(other)], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 2 and "neither a session summary" in out.stderr


def test_the_committed_measurements_merge_into_one_matrix():
    """`merge` of the committed H100, H200 and CPU results: one matrix with all three profiles."""
    files = [*sorted((ROOT / "docs/measurements/h200-2026-11-29").glob("*.jsonl")),
             *sorted((ROOT / "docs/measurements/h100-2026-11-27").glob("suite-aa1-results.jsonl")),
             *sorted((ROOT / "docs/measurements/cpu-2026-11-29").glob("sitting3-results.jsonl"))]
    md = render_markdown(load(files, ROOT / "baselines"))
    header = next(line for line in md.splitlines() if line.startswith("| configuration |"))
    for profile in ("nvidia-h200", "nvidia-h100-80gb-hbm3", "cpu-amd-epyc-x86_64-avx2-2c"):
        assert profile in header


def test_the_readme_takeaway_matrix_is_the_one_rendered_from_the_committed_measurements():
    """The README's matrix of claims x profiles is what `quantperf merge` renders from the committed
    results, summaries and baselines (the sources that docs/reports/measured.md lists): a figure
    edited by hand, or a baseline recorded without re-rendering, fails here."""
    from quantperf.report.table import markdown_table as _md_table

    sources = (ROOT / "docs/reports/measured.md").read_text(encoding="utf-8").split("Sources: ", 1)[1].split("\n", 1)[0]
    data = load([ROOT / s for s in sources.split(", ")], ROOT / "baselines")
    header, rows = sections(data)["Takeaways"]["tables"][0]
    rendered = _md_table(header, rows)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("| claim | ")
    assert readme[start:readme.index("\n\n", start)] == rendered


def test_several_runs_of_a_configuration_are_one_row_with_the_median_of_their_medians():
    from quantperf.report.html import kernel_rows, speed_rows

    runs = [_gen("nvidia-h200", "synthetic:llama-125m", "torch-fp16", v, 256.0) for v in (67.0, 105.0, 99.0)]
    (row,) = speed_rows(runs + [_gen("nvidia-h200", "synthetic:llama-125m", "bnb-int8", 30.0, 175.0)])[:1]
    assert row["runs"] == 3 and row["median"] == pytest.approx(99.0) and (row["q1"],
                                                                          row["q3"]) == pytest.approx((67.0, 105.0))
    (k,) = kernel_rows([_kernel("nvidia-h200", "torch-fp16", us) for us in (48.0, 48.3, 48.2)])
    assert k["runs"] == 3 and k["decode_us"] == pytest.approx(48.2) and 0 < k["decode_cv"] < 0.01
    from quantperf.report.html import quality_rows

    (q,) = quality_rows([_quality("cpu-x", "bnb-nf4", kld, 0.96) for kld in (1.3e-3, 1.3e-3, 1.4e-3)])
    assert q["runs"] == 3 and q["mean_kld"] == pytest.approx(1.3e-3)


def test_a_configuration_at_another_batch_is_a_row_of_its_own():
    """A claim's batch-8 configuration (llama-8b torch-bf16 kernel at batch 8) is other work than
    the tier's batch-1 one: never folded into its row as if it were another run of it."""
    from dataclasses import replace

    from quantperf.report.html import kernel_rows

    one = _kernel("nvidia-h200", "torch-bf16", 130.0)
    eight = _kernel("nvidia-h200", "torch-bf16", 172.0)
    eight.spec = replace(eight.spec, workload=replace(W, batch_size=8))
    rows = {r["model"]: r for r in kernel_rows([one, eight])}
    assert set(rows) == {"llama-1b", "llama-1b bs8"}
    assert rows["llama-1b"]["runs"] == rows["llama-1b bs8"]["runs"] == 1
    assert rows["llama-1b bs8"]["decode_us"] == pytest.approx(172.0)
    # ONNX Runtime's CUDA kernel figures name their timing; older ones were all wall-timed
    (ort,) = kernel_rows([_kernel("nvidia-h100", "ort-fp16", 385.0)])
    assert ort["methods"] == ["cuda-graph, wall"]
    (queued,) = kernel_rows([_kernel("nvidia-h100", "ort-fp16", 40.0, method="cuda-graph, gpu-queued")])
    assert queued["methods"] == ["cuda-graph, gpu-queued"]


def test_onnx_runtime_kernel_figures_measured_differently_are_rows_of_their_own():
    """A wall-timed (host-bound) ORT kernel figure and a GPU-timed one with the per-layer walk are
    different measurements of one configuration: other rows, never runs of one row (the gate
    refuses to compare them through their identity; the report must not fold them either)."""
    from dataclasses import replace

    from quantperf.report.html import cross_matrix, kernel_rows

    wall = [_kernel("nvidia-h100", "ort-fp16", us) for us in (330.0, 395.0)]  # identity without a timing: wall
    walk = _kernel("nvidia-h100", "ort-fp16", 55.3, method="cuda-graph, gpu-queued")
    walk.backend_identity = {"kernel_timing": "gpu-queued", "kernel_walk": "one weight copy per decoder layer"}
    cpu = _kernel("cpu-x", "ort-int8", 30.0, method="cpu-iobinding")
    cpu.spec, cpu.backend_identity = replace(cpu.spec,
                                             device="cpu"), {"kernel_walk": "one weight copy per decoder layer"}
    rows = {r["backend"]: r for r in kernel_rows([*wall, walk, cpu])}
    assert set(rows) == {"ort-fp16 (wall)", "ort-fp16 (gpu-queued, walk)", "ort-int8 (walk)"}
    assert rows["ort-fp16 (wall)"]["runs"] == 2 and rows["ort-fp16 (gpu-queued, walk)"]["runs"] == 1
    assert rows["ort-fp16 (gpu-queued, walk)"]["decode_us"] == pytest.approx(55.3)
    configs, _, _ = cross_matrix([*wall, walk])
    assert configs == ["llama-1b ort-fp16 (gpu-queued, walk) kernel", "llama-1b ort-fp16 (wall) kernel"]
    # torch backends' rows, and an unavailable ORT result, keep the plain backend name
    unavailable = RunResult(spec=RunSpec("synthetic:llama-1b", "ort-int8", "cuda", "kernel", W), profile="nvidia-h100",
                            status="unavailable", reason="no CUDA kernels")
    assert cross_matrix([unavailable])[0] == ["llama-1b ort-int8 kernel"]
    assert [r["backend"] for r in kernel_rows([_kernel("nvidia-h100", "torch-fp16", 48.0)])] == ["torch-fp16"]


def test_the_upgrade_section_names_the_change_and_each_configurations_tolerance():
    """A report reader sees what was upgraded (from the report's overlay) and each mode's own
    tolerance, not one band for all: the committed H200 check, bitsandbytes 0.49.2 -> 0.50.2."""
    src = ROOT / "docs/measurements/h200-2026-11-29c/upgrade-report.json"
    data = load([src])
    (u,) = data.upgrades
    assert u["versions"] == "bitsandbytes 0.49.2 -> 0.50.2" and u["profile"] == "nvidia-h200"
    md = render_markdown(data)
    assert re.search(r"\| bitsandbytes 0\.49\.2 -> 0\.50\.2 \| llama-1b-bnb-nf4-cuda-bs1-kernel \| kernel \| us per "
                     r"layer \| "
                     r"0\.8510 \| \[0\.8412, 0\.8610\] \| \+/-1\.0% \| improved \|", md), md
    assert re.search(r"\| llama-1b-bnb-nf4-cuda-bs1-eager \| eager \| time per token \| 0\.9387 \| .* \| \+/-5\.5% \| "
                     r"inconclusive \|", md), md
    aa = load([ROOT / "docs/measurements/h200-2026-11-29c/upgrade-aa-report.json"]).upgrades[0]
    assert aa["versions"].startswith("A/A")

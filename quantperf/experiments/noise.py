"""How sharp is the gate? Noise figures from the suite's own results (pure).

- within-run CV: the spread of one configuration's per-round samples in one run;
- between-run CV: the spread of that configuration's medians across repeated runs;
- minimum detectable regression: the smallest slowdown the gate's test would flag with 80%
  power at the default number of rounds, given the within-run CV (stats.min_detectable_change);
- A/A false alarms and injected-slowdown detections: read from the suite's summary.json files.

    quantperf noise --runs run1/results.jsonl run2/results.jsonl --aa run2/summary.json run3/summary.json \
                    --inject inject/summary.json
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from ..results import ResultLog, RunResult
from ..stats import Summary, min_detectable_change

SPEED = ("decode_tokens_per_s", "prefill_ms", "e2e_tokens_per_s")
# The noise experiment's ablations (quantperf.experiments.sensitivity): each a setting changed between
# rounds of one loaded model, interleaved with the clean side.
VARIANTS = {
    "gc-on": {"gc_off": False},
    "unpinned": {"pin_cpu": False},
    "long": {"tokens_factor": 4},
}
# what a mode runs when no variants are named: `long` changes graph mode's static cache length
DEFAULT_VARIANTS = {"eager": ["gc-on", "unpinned", "long"], "graph": ["gc-on", "unpinned"], "kernel": []}


def run_noise(samples_per_run: list[list[float]]) -> dict:
    """Noise of one metric over repeated runs: within-run CV (median over runs), between-run CV
    (of the runs' medians), median of medians, and the smallest change the within-run rounds
    detect (stats.min_detectable_change). The one place these formulas live."""
    within = [Summary.from_values(s).cv for s in samples_per_run]
    medians = [statistics.median(s) for s in samples_per_run]
    n = min(len(s) for s in samples_per_run)
    cv_w = statistics.median(within)
    return {"runs": len(samples_per_run), "rounds": n, "cv_within": cv_w,
            "cv_between": Summary.from_values(medians).cv if len(medians) > 1 else None,
            "median": statistics.median(medians), "min_detectable": min_detectable_change(cv_w, n, n)}


def noise_rows(runs: list[list[RunResult]], metrics=SPEED) -> list[dict]:
    by_cfg: dict[tuple, list[RunResult]] = defaultdict(list)
    for run in runs:
        for r in run:
            if r.ok and r.metrics.get("decode_tokens_per_s"):
                by_cfg[(r.spec.id, r.spec.mode)].append(r)
    rows = []
    for (cid, mode), results in sorted(by_cfg.items()):
        for name in metrics:
            ms = [r.metrics[name] for r in results if name in r.metrics]
            if not ms:
                continue
            fig = run_noise([m.samples for m in ms])
            rows.append({"config": cid, "mode": mode, "metric": name,
                         **{k: v for k, v in fig.items() if k != "median"}})
    return rows


def gate_counts(summaries: list[dict]) -> dict:
    """Regressions and flips in suite summary.json files (A/A: both should be zero)."""
    from ..summary import SessionSummary

    parsed = [SessionSummary.from_dict(s) for s in summaries]
    return {"runs": len(parsed), "regressions": sum(len(s.regressions) for s in parsed),
            "flips": sum(len(s.flips) for s in parsed)}


def load_runs(paths: list[str]) -> list[list[RunResult]]:
    return [ResultLog(p).read() for p in paths]


def load_summaries(paths: list[str]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]

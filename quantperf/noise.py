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

from .results import ResultLog, RunResult
from .stats import Summary, min_detectable_change

SPEED = ("decode_tokens_per_s", "prefill_ms", "e2e_tokens_per_s")


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
            within = [m.summary.cv for m in ms]
            medians = [m.summary.median for m in ms]
            n = min(len(m.samples) for m in ms)
            cv_w = statistics.median(within)
            rows.append({
                "config": cid, "mode": mode, "metric": name, "runs": len(ms), "rounds": n,
                "cv_within": cv_w,
                "cv_between": Summary.from_values(medians).cv if len(medians) > 1 else None,
                "min_detectable": min_detectable_change(cv_w, n, n),
            })
    return rows


def gate_counts(summaries: list[dict]) -> dict:
    """Regressions and flips in suite summary.json files (A/A: both should be zero)."""
    regressions = sum(1 for s in summaries for c in s.get("configs", {}).values() if c.get("status") == "regressed")
    flips = sum(1 for s in summaries for c in s.get("claims", []) if c["verdict"] not in (c["expected"], "inconclusive"))
    return {"runs": len(summaries), "regressions": regressions, "flips": flips}


def load_runs(paths: list[str]) -> list[list[RunResult]]:
    return [ResultLog(p).read() for p in paths]


def load_summaries(paths: list[str]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]

#!/usr/bin/env bash
# How this repository's GPU numbers were produced on a lent machine with no registry access:
# carried wheels in .whl/, the image's own torch/transformers, no install step.
#   bash scripts/device-session.sh PHASE OUTDIR
# PHASE: record (record the GPU tier's baseline) | check (two A/A re-runs against it, then a
#        40 ms/token slowdown injected into torch-fp16 on the small-model configurations)
set -uo pipefail
phase="$1"; out="$2"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1 QUANTPERF_SKIP_INSTALL=1 QUANTPERF_CACHE="${QUANTPERF_CACHE:-/tmp/qpc}"
python3 -c "from quantperf.models import resolve; [resolve(f'synthetic:{s}') for s in ('llama-125m', 'llama-1b')]"
case "$phase" in
record)
    QUANTPERF_RESULTS_DIR="$out/rec" bash scripts/gpu-job.sh --qp-record
    cp baselines/*.json "$out/"
    ;;
check)
    for run in aa1 aa2; do
        QUANTPERF_RESULTS_DIR="$out/$run" timeout 215 bash scripts/gpu-job.sh -m "gpu and not quality"
    done
    QUANTPERF_INJECT_DELAY_MS="torch-fp16=40" QUANTPERF_RESULTS_DIR="$out/inject" timeout 120 \
        bash scripts/gpu-job.sh -m "gpu and not quality" -k "125m or small"
    ;;
esac

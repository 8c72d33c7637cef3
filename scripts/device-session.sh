#!/usr/bin/env bash
# How this repository's GPU numbers were produced on a lent machine with no registry access:
# carried wheels in .whl/, the image's own torch/transformers, no install step.
#   bash scripts/device-session.sh PHASE OUTDIR
# PHASE: record      record (add a run to) the GPU tier's baseline
#        aa [N]      N A/A re-runs against the baseline (default 1), each into OUTDIR/aaI
#        inject      a 40 ms/token slowdown injected into torch-fp16 on the small-model configurations
#        noise MODE N [VARIANTS]
#                    the noise benchmark (quantperf/sensitivity.py) on the tier's MODE noise
#                    configuration in N fresh processes; VARIANTS: comma-separated ablations
#                    (default: the tier's), '' for none
# One GPU-tier run without quality takes ~190 s on an H100: two A/A runs fit one 10-minute call.
# The noise benchmark takes ~40 s per process in graph mode with all ablations, ~45 s in eager
# mode without them.
set -uo pipefail
phase="$1"; out="$2"
case "$phase" in record|aa|inject|noise) ;; *) echo "unknown phase $phase: use record, aa [N], inject or noise MODE N" >&2; exit 2 ;; esac
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
aa)
    for i in $(seq 1 "${3:-1}"); do
        QUANTPERF_RESULTS_DIR="$out/aa$i" bash scripts/gpu-job.sh -m "gpu and not quality"
    done
    ;;
noise)
    variants=()
    if [ "$#" -ge 5 ]; then variants=(--qp-noise-variants "$5"); fi
    QUANTPERF_RESULTS_DIR="$out/noise-$3" bash scripts/gpu-job.sh -k "repeatability and $3" \
        --qp-noise-runs "${4:-10}" "${variants[@]}"
    ;;
inject)
    QUANTPERF_INJECT_DELAY_MS="torch-fp16=40" QUANTPERF_RESULTS_DIR="$out/inject" \
        bash scripts/gpu-job.sh -m "gpu and not quality" -k "125m or small"
    ;;
esac

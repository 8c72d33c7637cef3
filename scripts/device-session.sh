#!/usr/bin/env bash
# How this repository's GPU numbers were produced on a lent machine with no registry access:
# carried wheels, the image's own torch/transformers, no install step.
#   bash scripts/device-session.sh PHASE OUTDIR [ARGS]
# PHASE: ortpart DIR  copy one carried part of the onnxruntime-gpu wheel to /tmp/ortparts (the
#                     wheel is larger than one call may carry: it travels in parts, one a call)
#        setup        install .whl/*.whl and the joined onnxruntime-gpu wheel into /tmp/site
#                     (sha256 checked against .whl-ort.sha256)
#        record [N]   N recording runs of the GPU tier (the first with quality, the rest without)
#        aa [N]       N A/A re-runs against the baseline, each into OUTDIR/aaI
#        inject       a 40 ms/token slowdown injected into torch-fp16 on the small-model configurations
#        kernel MODEL every CUDA backend's kernels at decode and prefill shape (quantperf run --mode kernel)
#        noise MODE N [VARIANTS]
#                     the noise benchmark on the tier's MODE noise configuration in N fresh processes
# Every phase after setup needs the same machine (it stays warm 30 s between calls): baselines
# live in /tmp/bl (copied from baselines/ at setup), results in /tmp/qpout; each phase ends by
# packing its results into OUTDIR/PHASE.tgz and copying the GPU baselines to OUTDIR (a call
# brings back at most 8 files).
set -uo pipefail
phase="$1"; out="$2"
case "$phase" in ortpart|setup|record|aa|inject|kernel|noise) ;; *) echo "unknown phase $phase" >&2; exit 2 ;; esac
if [ "$phase" = ortpart ]; then
    mkdir -p /tmp/ortparts && cp "$3"/part* /tmp/ortparts/ && ls -la /tmp/ortparts
    exit $?
fi
if [ "$phase" = setup ]; then
    mkdir -p /tmp/site
    if ls /tmp/ortparts/part* >/dev/null 2>&1; then
        cat /tmp/ortparts/part* > /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
        (cd /tmp && sha256sum -c "$OLDPWD/.whl-ort.sha256") || exit 3
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl || exit 4
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 5
    mkdir -p /tmp/bl /tmp/qpout && cp baselines/*.json baselines/*.toml /tmp/bl/
    PYTHONPATH="/tmp/site:$PWD" python3 -c "import onnxruntime as o, bitsandbytes, torchao, pydantic; print(o.__version__, o.get_available_providers())"
    exit $?
fi
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 QUANTPERF_SKIP_INSTALL=1 QUANTPERF_CACHE="${QUANTPERF_CACHE:-/tmp/qpc}"
pack() { tar czf "$out/$1.tgz" -C /tmp/qpout "$1"; cp /tmp/bl/nvidia-*.json "$out/" 2>/dev/null; true; }
job() { bash scripts/gpu-job.sh --qp-baselines /tmp/bl "$@"; }
python3 -c "from quantperf.models import resolve; [resolve(f'synthetic:{s}') for s in ('llama-125m', 'llama-1b')]"
case "$phase" in
record)
    for i in $(seq 1 "${3:-1}"); do
        n=$(ls -d /tmp/qpout/rec* 2>/dev/null | wc -l); n=$((n + 1))
        sel=(); [ "$n" -gt 1 ] && sel=(-m "gpu and not quality")
        QUANTPERF_RESULTS_DIR="/tmp/qpout/rec$n" job --qp-record "${sel[@]}"
        pack "rec$n"
    done
    ;;
aa)
    for i in $(seq 1 "${3:-1}"); do
        n=$(ls -d /tmp/qpout/aa* 2>/dev/null | wc -l); n=$((n + 1))
        QUANTPERF_RESULTS_DIR="/tmp/qpout/aa$n" job -m "gpu and not quality"
        pack "aa$n"
    done
    ;;
inject)
    QUANTPERF_INJECT_DELAY_MS="torch-fp16=40" QUANTPERF_RESULTS_DIR="/tmp/qpout/inject" \
        job -m "gpu and not quality" -k "125m or small"
    pack inject
    ;;
kernel)
    mkdir -p /tmp/qpout/kernel
    python3 -m quantperf run --device cuda --mode kernel --backend all --model "${3:-synthetic:llama-1b}" \
        --out "/tmp/qpout/kernel/results.jsonl" 2>&1 | tee "/tmp/qpout/kernel/run.log"
    pack kernel
    ;;
noise)
    variants=()
    if [ "$#" -ge 5 ]; then variants=(--qp-noise-variants "$5"); fi
    QUANTPERF_RESULTS_DIR="/tmp/qpout/noise-$3" job -k "repeatability and $3" --qp-noise-runs "${4:-10}" "${variants[@]}"
    pack "noise-$3"
    ;;
esac

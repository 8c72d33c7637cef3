#!/usr/bin/env bash
# How this repository's GPU numbers were produced on a lent machine with no registry access:
# carried wheels, the image's own torch/transformers, no install step, calls of a few seconds
# while a pipeline of measurements runs in the background (a machine goes back after 30 s idle).
#   bash scripts/device-session.sh PHASE OUTDIR [ARGS]
# PHASE: wheels        install the carried .whl/*.whl (bitsandbytes, torchao, ...) into /tmp/site
#        ortpart DIR   copy one carried part of the onnxruntime-gpu wheel to /tmp/ortparts (the
#                      wheel is larger than one call may carry: it travels in parts, one a call)
#        ortsetup      join the parts (sha256 checked against .whl-ort.sha256), install into /tmp/site
#        histin DIR    copy a carried results store (an earlier lease's sittings) to /tmp/hist
#        tfwheels      copy the carried .whltf/*.whl (a newer transformers and what it needs) to /tmp/whtf
#        extra DIR     install the wheels in DIR into /tmp/site too (a wheel too large to ride with the
#                      others in one call, e.g. mslk-cuda for torchao-int4wo)
#        oldpart DIR   the same for the parts of an older bitsandbytes wheel (the upgrade check's side A)
#        oldsetup      join them (sha256 checked against .whl-bnbold.sha256) and install that wheel alone
#                      into /tmp/site-old, which the upgrade steps put ahead of /tmp/site
#        start STEP... snapshot this checkout to /tmp/qp-src.* and run the STEPs one after another in
#                      the background (setsid), each under its own time limit; a running pipeline
#                      is stopped first
#        after STEP... the same, queued behind the running pipeline
#        collect [S]   wait up to S seconds (default 0) for the pipeline, then pack every step's
#                      results into OUTDIR/STEP.tgz and print the pipeline's status and log tails
# STEPs (QP_WARM_MODELS: the models `warm` builds): kernel-1b, kernel-8b (every torch/bitsandbytes/torchao backend in kernel mode; repeated,
#        a fresh process again, into kernel-1b-2, ...), large (the large tier, recorded; QP_LARGE_K its
#        pytest -k; repeated into large2, ...), large-ort (the large tier's ONNX Runtime configurations,
#        recorded; waits for ortsetup; QP_LARGE_ORT_K narrows its pytest -k, e.g. ort-int4), huge (the 70B tier, recorded, on all GPUs: needs several GPUs
#        and 144 GB of disk),
#        noise-kernel (the noise benchmark on kernel mode, 10 fresh processes; QP_NOISE_K its
#        configurations' pytest -k, default torch; ort waits for ortsetup), ort (ort-fp16,
#        ort-int4, ort-int8 on the CUDA EP, eager and kernel mode; waits for ortsetup; repeated, a fresh
#        process again, into ort-2, ...; QP_ORT_MODES its modes),
#        rec (one recording run of the GPU tier into /tmp/bl; QP_M its -m), aa (an A/A run), inject (QP_INJECT,
#        default torch-fp16=10 ms/token, about 2x on llama-125m, on the 125m tests); QP_K selects their
#        tests (pytest -k, default 125m); layout (`pytest benchmarks -m gpu -k 125m`, the README's GPU
#        command, with --qp-report); upgrade-aa / upgrade (`quantperf upgrade-check` A/A calibration,
#        then the installed bitsandbytes against the old one of oldsetup: A = old, B = /tmp/wh's wheel;
#        QP_UP_BACKENDS, QP_UP_MODES); sitting (the GPU tier, QP_M its -m, kept in the results
#        store /tmp/hist, copied into OUTDIR/hist); tier-ab (the GPU tier as an A/B, --qp-against: A = bitsandbytes
#        QP_TIER_AB_OLD, default 0.49.2, from the carried .whlold/); aa-kernel (kernel-mode A/A over QP_AA_BACKENDS, the walk of
#        QUANTPERF_KERNEL_WALK); ab-kernel (kernel-mode A/A over every capturable backend, QP_AB_BACKENDS,
#        process pairs shared or not per QUANTPERF_AB_SHARE); ab-old / ab-4 / ab-4-overlap (the same A/A over
#        QP_AB4_BACKENDS, default four, on an earlier checkout's quantperf in QP_AB_SRC / on this one / on this one
#        with QUANTPERF_AB_OVERLAP=1: before and after in one lease; ab-old's is QP_AB_OLD_OVERLAP, default 0); profile (scripts/profile_load.py over
#        QP_PROFILE_BACKENDS: cProfile of a kernel-mode load, warm-up and round); tfcheck (`quantperf upgrade-check transformers==5.25.0` against the image's
#        transformers, side B from tfwheels; QP_TF_SPEC, QP_TF_BACKENDS, QP_TF_MODES); warm (the one-time builds alone: checkpoints, ONNX exports),
#        matrix (`pytest benchmarks -m gpu -n QP_N`: the whole matrix on QP_N GPUs, default 1, its wall
#        time in STATUS; after `warm` it is the warm-cache figure); QP_1B_BACKENDS / QP_8B_BACKENDS the backends of kernel-1b / kernel-8b;
#        QP_KERNEL_WORKER_TIMEOUT / QP_LARGE_WORKER_TIMEOUT: seconds a worker of kernel-* / large may stay
#        silent before it is asked for its stacks and killed (QUANTPERF_WORKER_TIMEOUT_S).
#
# The machine goes back after 30 s without a call in flight, and with it every installed wheel
# and every result not yet collected: while the pipeline runs, keep a `collect 250` call in flight
# (it returns when the pipeline ends or after 250 s, with every finished step's results) and
# issue the next one at once; edit code between calls only in short bursts.
set -uo pipefail
phase="$1"; out="$2"
Q=/tmp/qpout
mkdir -p "$Q"
case "$phase" in
wheels)
    mkdir -p /tmp/site /tmp/bl
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 5
    cp -n baselines/*.json baselines/*.toml /tmp/bl/ 2>/dev/null
    mkdir -p /tmp/wh && cp .whl/bitsandbytes-*.whl /tmp/wh/  # side B's wheel for the upgrade steps
    PYTHONPATH=/tmp/site python3 -c "import bitsandbytes, torchao, pydantic; print('bnb', bitsandbytes.__version__, 'torchao', torchao.__version__)"
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
    exit $?
    ;;
extra)
    # installed apart first and checked (an int4 linear through torchao, for mslk-cuda): a wheel
    # that does not work with the image's torch must not break the steps already queued
    rm -rf /tmp/site-extra
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-extra "$3"/*.whl || exit 5
    PYTHONPATH=/tmp/site-extra:/tmp/site timeout 120 python3 -c "
import torch, torchao
from torchao.quantization import Int4WeightOnlyConfig, quantize_
lin = torch.nn.Linear(256, 256, dtype=torch.bfloat16, device='cuda')
quantize_(lin, Int4WeightOnlyConfig(group_size=128))
x = torch.randn(1, 256, dtype=torch.bfloat16, device='cuda')
print('extra ok: torchao', torchao.__version__, type(lin.weight).__name__, float(lin(x).float().abs().mean()))
" || { echo "extra: check failed, not installed"; exit 6; }
    cp -r /tmp/site-extra/. /tmp/site/ && touch /tmp/site/.extra-ready
    exit $?
    ;;
histin)
    # a results store carried in (a previous lease's sittings) becomes /tmp/hist
    mkdir -p /tmp/hist && cp -r "$3"/. /tmp/hist/ && find /tmp/hist -name '*.json' | wc -l
    exit $?
    ;;
tfwheels)
    # side B's wheels of the transformers check (transformers and the dependencies it needs that the image lacks)
    mkdir -p /tmp/whtf && cp .whltf/*.whl /tmp/whtf/ && ls /tmp/whtf | wc -l
    exit $?
    ;;
ortpart)
    mkdir -p /tmp/ortparts && cp "$3"/part* /tmp/ortparts/ && ls -la /tmp/ortparts
    exit $?
    ;;
ortsetup)
    cat /tmp/ortparts/part* > /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
    (cd /tmp && sha256sum -c "$OLDPWD/.whl-ort.sha256") || exit 3
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl || exit 4
    touch /tmp/site/.ort-ready
    PYTHONPATH=/tmp/site python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
    exit $?
    ;;
oldpart)
    mkdir -p /tmp/oldparts && cp "$3"/part* /tmp/oldparts/ && ls -la /tmp/oldparts
    exit $?
    ;;
oldsetup)
    whl=$(awk '{print $2}' .whl-bnbold.sha256)
    cat /tmp/oldparts/part* > "/tmp/$whl"
    (cd /tmp && sha256sum -c "$OLDPWD/.whl-bnbold.sha256") || exit 3
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-old \
        "/tmp/$whl" || exit 4
    touch /tmp/site-old/.ready
    PYTHONPATH=/tmp/site-old:/tmp/site python3 -c "import bitsandbytes as b; print('side A: bitsandbytes', b.__version__)"
    exit $?
    ;;
start|after)
    # start: stop a running pipeline first; after: queue behind it
    shift 2
    prev=""; [ -f "$Q/pipeline.pid" ] && prev=$(cat "$Q/pipeline.pid")
    if [ "$phase" = start ] && [ -n "$prev" ]; then kill -- -"$prev" 2>/dev/null; prev=""; fi
    if [ -d .whlold ]; then mkdir -p /tmp/whold && cp .whlold/*.whl /tmp/whold/; fi  # side A's wheels of tier-ab
    src=$(mktemp -d /tmp/qp-src.XXXX) && cp -r quantperf benchmarks baselines scripts conftest.py pyproject.toml "$src/"
    echo "pipeline: $* (queued $(date -u +%H:%M:%S))" >> "$Q/STATUS"
    setsid bash -c "while [ -n '$prev' ] && kill -0 '$prev' 2>/dev/null; do sleep 2; done; \
        exec bash '$src/scripts/device-session.sh' _run '$out' $*" >> "$Q/pipeline.log" 2>&1 < /dev/null &
    echo $! > "$Q/pipeline.pid"
    sleep 1; tail -n 3 "$Q/pipeline.log"
    exit 0
    ;;
collect)
    waited=0; limit="${3:-0}"
    while [ "$waited" -lt "$limit" ] && [ -f "$Q/pipeline.pid" ] && kill -0 "$(cat "$Q/pipeline.pid")" 2>/dev/null; do
        sleep 5; waited=$((waited + 5))
    done
    for d in "$Q"/*/; do
        [ -d "$d" ] || continue
        n=$(basename "$d"); tar czf "$out/$n.tgz" -C "$Q" "$n"
    done
    cp /tmp/bl/nvidia-*.json "$out/" 2>/dev/null
    echo "== STATUS"; cat "$Q/STATUS"
    echo "== pipeline.log (tail)"; tail -n 40 "$Q/pipeline.log"
    nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw,memory.used --format=csv,noheader
    exit 0
    ;;
_run) ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac

# ---- the background pipeline (runs from the snapshot in /tmp/qp-src) -----------------------
shift 2
src="$(cd "$(dirname "$0")/.." && pwd)"
cd "$src" || exit 1
export PYTHONPATH="/tmp/site:$src" PYTHONUNBUFFERED=1 QUANTPERF_SKIP_INSTALL=1 QUANTPERF_CACHE=/tmp/qpc QUANTPERF_PROGRESS=log
QP_K="${QP_K:-125m}"  # which GPU-tier tests rec/aa/inject run (pytest -k)
TORCH_BACKENDS="torch-fp32 torch-fp16 torch-bf16 bnb-int8 bnb-int8-nodecomp bnb-nf4 bnb-fp4 torchao-int8wo torchao-int4wo"
# every backend whose kernels CUDA graphs capture (bnb-int8 with its outlier threshold syncs with the host)
AB_BACKENDS="torch-fp16 torch-bf16 torch-fp32 bnb-nf4 bnb-fp4 bnb-int8-nodecomp torchao-int8wo torchao-fp8wo torchao-fp8dq torchao-int4wo"
# waits (up to 10 min) for ortsetup only where ORT parts were carried in (ortpart): without them a step
# that waits would hold the pipeline for 10 minutes of device time for nothing
wait_ort() {
    [ -d /tmp/ortparts ] || [ -f /tmp/site/.ort-ready ] || return 1
    for _ in $(seq 1 120); do [ -f /tmp/site/.ort-ready ] && return 0; sleep 5; done; return 1
}
gpu_job() {  # results dir, time limit, pytest args...
    local dir="$1" limit="$2"; shift 2
    mkdir -p "$dir"
    timeout -k 10 "$limit" python3 -m pytest benchmarks -m gpu -p no:cacheprovider -rsfE -v --durations=0 \
        -o faulthandler_timeout="${QP_FAULTHANDLER_S:-200}" --qp-baselines /tmp/bl --qp-results "$dir/results.jsonl" --qp-report "$dir/report" \
        "$@" > "$dir/pytest.log" 2>&1
}
step() {  # name, then the command
    local name="$1"; shift
    local t0; t0=$(date +%s)
    echo "[$(date -u +%H:%M:%S)] $name: start"
    "$@"
    local rc=$?
    echo "$name rc=$rc $(( $(date +%s) - t0 )) s" >> "$Q/STATUS"
    echo "[$(date -u +%H:%M:%S)] $name: rc=$rc"
}
n_of() { local n; n=$(ls -d "$Q/$1"* 2>/dev/null | wc -l); echo $((n + 1)); }
for s in "$@"; do
    case "$s" in
    kernel-1b|kernel-8b)
        # a repeated step is a fresh process per backend again: kernel-1b, kernel-1b-2, ...
        model="synthetic:llama-${s#kernel-}"; d="$Q/$s"; [ -d "$d" ] && d="$Q/$s-$(n_of "$s")"; mkdir -p "$d"
        backends="${QP_1B_BACKENDS:-$TORCH_BACKENDS}"; [ "$s" = kernel-8b ] && backends="${QP_8B_BACKENDS:-$TORCH_BACKENDS}"
        # shellcheck disable=SC2086
        QUANTPERF_WORKER_TIMEOUT_S="${QP_KERNEL_WORKER_TIMEOUT:-1800}" step "$(basename "$d")" timeout -k 10 900 python3 -m quantperf run --device cuda --mode kernel --backend $backends \
            --model "$model" --out "$d/results.jsonl" --markdown > "$d/run.log" 2>&1
        ;;
    noise-kernel)
        [ -n "${QP_NOISE_K:-}" ] && wait_ort
        d="$Q/$s"; [ -d "$d" ] && d="$Q/$s-$(n_of "$s")"
        step "$(basename "$d")" gpu_job "$d" 900 -k "repeatability and kernel and (${QP_NOISE_K:-torch})" --qp-noise-runs 10 --qp-noise-variants ""
        ;;
    ort)
        d="$Q/ort"; [ -d "$d" ] && d="$Q/ort-$(n_of ort)"; mkdir -p "$d"
        wait_ort
        # shellcheck disable=SC2086
        step "$(basename "$d")" timeout -k 10 900 python3 -m quantperf run --device cuda --mode ${QP_ORT_MODES:-eager kernel} \
            --backend ort-fp16 ort-int4 ort-int8 --model synthetic:llama-1b --out "$d/results.jsonl" --markdown \
            > "$d/run.log" 2>&1
        ;;
    rec)
        n=$(n_of rec); step "rec$n" gpu_job "$Q/rec$n" 900 --qp-record -m "${QP_M:-gpu and not quality and not slow}" -k "$QP_K"
        ;;
    aa)
        n=$(n_of aa); step "aa$n" gpu_job "$Q/aa$n" 900 -m "gpu and not quality and not slow" -k "$QP_K"
        ;;
    large)  # the large tier (llama-8b kernel mode, FP8) and its claims, recorded into /tmp/bl
        # three 8B loads in a row (torchao quantizes at load, ~60 s each) outlast the 200 s stack dump
        d="$Q/large"; [ -d "$d" ] && d="$Q/large$(n_of large)"
        QP_FAULTHANDLER_S=600 QUANTPERF_WORKER_TIMEOUT_S="${QP_LARGE_WORKER_TIMEOUT:-300}" step "$(basename "$d")" gpu_job "$d" 900 --qp-record -m "gpu and slow and not quality" -k "not repeatability and (${QP_LARGE_K:-8b or large or fp8})"
        ;;
    huge)  # the 70B tier on every GPU of the host (no -n: a spread model needs all of them), recorded
        QP_FAULTHANDLER_S=1500 QUANTPERF_WORKER_TIMEOUT_S="${QP_LARGE_WORKER_TIMEOUT:-1800}" step huge gpu_job "$Q/huge" 2400 --qp-record -m "gpu and slow" -k "70b"
        ;;
    large-ort)  # the large tier's ONNX Runtime kernel configurations (one-decoder-layer exports at 8B shapes)
        wait_ort
        QP_FAULTHANDLER_S=600 QUANTPERF_WORKER_TIMEOUT_S="${QP_LARGE_WORKER_TIMEOUT:-600}" step large-ort gpu_job "$Q/large-ort" 900 --qp-record -m "gpu and slow and not quality" -k "not repeatability and 8b and (${QP_LARGE_ORT_K:-ort})"
        ;;
    layout)
        step layout gpu_job "$Q/layout" 900 -k 125m
        ;;
    warm)  # the one-time builds only (synthetic checkpoints, ONNX exports), for a warm-cache wall time
        mkdir -p "$Q/warm"
        step warm timeout -k 10 900 python3 -m quantperf run --device cuda --mode eager --backend torch-fp16 \
            --model ${QP_WARM_MODELS:-synthetic:llama-125m synthetic:llama-1b synthetic:llama-8b} --rounds 1 --warmup 0 --new-tokens 2 \
            --out "$Q/warm/results.jsonl" > "$Q/warm/run.log" 2>&1
        if wait_ort; then
            step warm-ort timeout -k 10 900 python3 -m quantperf run --device cuda --mode eager --backend ort-fp16 ort-int4 \
                --model synthetic:llama-1b --rounds 1 --warmup 0 --new-tokens 2 --out "$Q/warm/results.jsonl" >> "$Q/warm/run.log" 2>&1
        fi
        ;;
    matrix)  # the whole GPU matrix (every tier, quality, claims) on QP_N GPUs (pytest-xdist); wall time in STATUS
        n=$(n_of matrix); QP_FAULTHANDLER_S=900 step "matrix$n-n${QP_N:-1}" gpu_job "$Q/matrix$n" 3000 -n "${QP_N:-1}"
        ;;
    upgrade-aa|upgrade)
        mkdir -p "$Q/$s"
        for _ in $(seq 1 120); do [ -f /tmp/site-old/.ready ] && break; sleep 5; done
        what=(--aa --calibration "$Q/upgrade-aa/calibration.json")
        [ "$s" = upgrade ] && what=(bitsandbytes --find-links /tmp/wh --no-index --calibration "$Q/upgrade-aa/calibration.json" --quality)
        # shellcheck disable=SC2086
        PYTHONPATH="/tmp/site-old:$PYTHONPATH" step "$s" timeout -k 10 600 python3 -m quantperf upgrade-check "${what[@]}" \
            --device cuda --model synthetic:llama-1b --backend ${QP_UP_BACKENDS:-bnb-nf4 bnb-int8-nodecomp} \
            --mode ${QP_UP_MODES:-kernel graph eager} --markdown "$Q/$s/report.md" --json "$Q/$s/report.json" \
            > "$Q/$s/run.log" 2>&1
        ;;
    sitting)  # a nightly-style sitting of the GPU tier kept in the results store /tmp/hist (histin carries one in)
        n=$(n_of sitting); QP_FAULTHANDLER_S=600 step "sitting$n" gpu_job "$Q/sitting$n" 900 -m "${QP_M:-gpu and not slow}" \
            -k "${QP_SITTING_K:-not nothing}" --qp-history /tmp/hist
        mkdir -p "$Q/hist" && cp -r /tmp/hist/. "$Q/hist/"
        ;;
    tier-ab)  # the GPU tier as an A/B (--qp-against, no baseline read): A = bitsandbytes QP_TIER_AB_OLD (default
        # 0.49.2, its wheel carried in .whlold/), B = the installed one; QP_M its -m
        QP_FAULTHANDLER_S=600 step tier-ab gpu_job "$Q/tier-ab" 900 -m "${QP_M:-gpu and not slow}" \
            --qp-against "bitsandbytes==${QP_TIER_AB_OLD:-0.49.2}" --qp-against-find-links /tmp/whold --qp-against-no-index
        ;;
    aa-kernel)  # the kernel-mode A/A upgrade check over QP_AA_BACKENDS, walk QUANTPERF_KERNEL_WALK (unset: layer)
        d="$Q/aa-kernel-${QUANTPERF_KERNEL_WALK:-layer}"; mkdir -p "$d"
        # shellcheck disable=SC2086
        step "$(basename "$d")" timeout -k 10 900 python3 -m quantperf upgrade-check --aa --device cuda \
            --model synthetic:llama-1b --mode kernel --backend ${QP_AA_BACKENDS:-torch-fp16 bnb-nf4} \
            --markdown "$d/report.md" --json "$d/report.json" > "$d/run.log" 2>&1
        ;;
    ab-kernel)  # the kernel-mode A/A over every capturable backend (QP_AB_BACKENDS), pairs shared per
        # QUANTPERF_AB_SHARE (unset: shared, kernel mode; off: a fresh pair per configuration); a repeated
        # step goes into ab-kernel-shared-2, ...
        d="$Q/ab-kernel-${QUANTPERF_AB_SHARE:-shared}"; [ -d "$d" ] && d="$d-$(n_of "$(basename "$d")")"; mkdir -p "$d"
        # shellcheck disable=SC2086
        step "$(basename "$d")" timeout -k 10 900 python3 -m quantperf upgrade-check --aa --device cuda \
            --model synthetic:llama-1b --mode kernel --backend ${QP_AB_BACKENDS:-$AB_BACKENDS} \
            --markdown "$d/report.md" --json "$d/report.json" > "$d/run.log" 2>&1
        ;;
    ab-old|ab-4|ab-4-overlap)  # before/after in one lease: the kernel-mode A/A over QP_AB4_BACKENDS on an earlier
        # checkout's quantperf (ab-old: the folder QP_AB_SRC holding its quantperf/, run from there so that its code
        # is the one imported), on this one (ab-4), on this one with pairs started ahead (ab-4-overlap)
        d="$Q/$s"; [ -d "$d" ] && d="$d-$(n_of "$s")"; mkdir -p "$d"
        root="$src"; [ "$s" = ab-old ] && root="${QP_AB_SRC:?ab-old needs QP_AB_SRC}"
        ov=0; [ "$s" = ab-4-overlap ] && ov=1; [ "$s" = ab-old ] && ov="${QP_AB_OLD_OVERLAP:-0}"
        step "$(basename "$d")" bash -c "cd '$root' && QUANTPERF_AB_OVERLAP=$ov PYTHONPATH=/tmp/site:'$root' timeout -k 10 900 python3 -m quantperf \
            upgrade-check --aa --device cuda --model synthetic:llama-1b --mode kernel \
            --backend ${QP_AB4_BACKENDS:-torch-fp16 bnb-nf4 bnb-int8-nodecomp torchao-int8wo} \
            --markdown '$d/report.md' --json '$d/report.json' > '$d/run.log' 2>&1"
        ;;
    profile)  # where a kernel-mode load, warm-up and round spend their time (scripts/profile_load.py, cProfile)
        mkdir -p "$Q/profile"
        # shellcheck disable=SC2086
        step profile timeout -k 10 300 python3 scripts/profile_load.py --device cuda --mode kernel --model synthetic:llama-1b \
            --backend ${QP_PROFILE_BACKENDS:-torch-fp16 bnb-nf4 torchao-int8wo} > "$Q/profile/profile.log" 2>&1
        ;;
    tfcheck)  # the transformers upgrade check: A = the image's transformers, B = the newest carried in .whltf
        # (copied to /tmp/whtf by the tfwheels phase); nothing set by hand: quantperf decides Hub kernels itself
        mkdir -p "$Q/tfcheck"
        # shellcheck disable=SC2086
        step tfcheck timeout -k 10 900 python3 -m quantperf upgrade-check ${QP_TF_SPEC:-transformers==5.25.0} \
            --find-links /tmp/whtf --no-index --allow-changes --device cuda --model synthetic:llama-1b \
            --backend ${QP_TF_BACKENDS:-torch-fp16} --mode ${QP_TF_MODES:-eager graph} --quality \
            --markdown "$Q/tfcheck/report.md" --json "$Q/tfcheck/report.json" > "$Q/tfcheck/run.log" 2>&1
        ;;
    inject)
        QUANTPERF_INJECT_DELAY_MS="${QP_INJECT:-torch-fp16=10}" step inject gpu_job "$Q/inject" 900 -m "gpu and not quality and not slow" \
            -k "($QP_K) and 125m"
        ;;
    *) echo "unknown step $s" ;;
    esac
done
echo "pipeline done $(date -u +%H:%M:%S)" >> "$Q/STATUS"

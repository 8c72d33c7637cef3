#!/usr/bin/env bash
# The GPU CI job, runnable as is on any GPU box: `bash scripts/gpu-job.sh [pytest args]`.
#
# It installs quantperf with the GPU extras into .venv-gpu, pinned by the lock:
# `pip install -e ".[gpu,test]" -c constraints-gpu.txt` (QUANTPERF_CONSTRAINTS names another
# constraints file, or `none` for whatever is newest; QUANTPERF_SKIP_INSTALL=1 uses the current
# Python environment instead; QUANTPERF_INSTALL_ONLY=1 stops after installing), prints the
# detected profile, and runs the GPU tier of the benchmark suite against baselines/<profile>.json
# (or, given `--qp-against SPECS`, against those versions in an A/B). Exit status: non-zero when
# a takeaway flips or a metric regresses. Results: $QUANTPERF_RESULTS_DIR/results.jsonl and
# summary.json, report/report.html (plots embedded) and report/report.md (default .quantperf-results/).
#
# The results store (docs/history.md) goes through to pytest like any other argument:
# `--qp-history STORE` (a directory; add `--qp-history-branch B` for a branch of the git repository
# STORE, and `--qp-history-push REMOTE` to push it), or QUANTPERF_HISTORY=STORE in the environment.
# The baselines then derive from the store's sittings of main and the run's sitting is appended to
# it; the nightly workflow passes `--qp-history quantperf-store`, a read-only copy of its branch.
set -euo pipefail
cd "$(dirname "$0")/.."
results_dir="${QUANTPERF_RESULTS_DIR:-.quantperf-results}"
constraints="${QUANTPERF_CONSTRAINTS:-constraints-gpu.txt}"
if [ "${QUANTPERF_SKIP_INSTALL:-0}" != "1" ]; then
    python3 -m venv .venv-gpu
    # shellcheck disable=SC1091
    . .venv-gpu/bin/activate
    python -m pip install --upgrade pip
    if [ "$constraints" = "none" ]; then
        python -m pip install -e ".[gpu,test]"
    else
        python -m pip install -e ".[gpu,test]" -c "$constraints"
    fi
fi
if [ "${QUANTPERF_INSTALL_ONLY:-0}" = "1" ]; then
    echo "quantperf gpu job: installed (constraints: $constraints)"
    exit 0
fi
mkdir -p "$results_dir"
python3 -m quantperf profile --device cuda | head -n 1 || true
start=$(date +%s)
set +e
python3 -m pytest benchmarks -m gpu -p no:cacheprovider -rsfE \
    --qp-results "$results_dir/results.jsonl" --qp-report "$results_dir/report" "$@" 2>&1 | tee "$results_dir/pytest.log"
status=${PIPESTATUS[0]}
set -e
echo "quantperf gpu job: exit $status, wall $(( $(date +%s) - start )) s"
exit "$status"

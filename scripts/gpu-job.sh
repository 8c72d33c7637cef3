#!/usr/bin/env bash
# The GPU CI job, runnable as is on any GPU box: `bash scripts/gpu-job.sh [pytest args]`.
#
# It installs quantperf with the GPU extras into .venv-gpu (QUANTPERF_SKIP_INSTALL=1 uses
# the current Python environment instead), prints the detected profile, and runs the GPU
# tier of the benchmark suite against baselines/<profile>.json. Exit status: non-zero when a
# takeaway flips or a metric regresses. Results: $QUANTPERF_RESULTS_DIR/results.jsonl and
# summary.json, report/report.html (plots embedded) and report/report.md (default .quantperf-results/).
set -euo pipefail
cd "$(dirname "$0")/.."
results_dir="${QUANTPERF_RESULTS_DIR:-.quantperf-results}"
if [ "${QUANTPERF_SKIP_INSTALL:-0}" != "1" ]; then
    python3 -m venv .venv-gpu
    # shellcheck disable=SC1091
    . .venv-gpu/bin/activate
    python -m pip install --upgrade pip
    python -m pip install -e ".[gpu,test]"
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

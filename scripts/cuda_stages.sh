#!/usr/bin/env bash
# The pipeline's own stages on a GPU machine that has no Snakemake, DVC or MLflow (issue 17):
# every run of the given params files through the same `python -m pipeline.<stage>` commands
# the Snakefile runs (fetch, prepare, classifier; train; evaluate), with their MLflow calls
# left in each run's journal (they are deferred anyway).  What it measures: each stage's cost
# record (train.json / eval.json "cost": wall, CPU, peak RSS) on that machine, the input of
# scripts/derive_resources.py --measured, so SLURM requests can come from GPU measurements.
#
#   bash scripts/cuda_stages.sh PARAMS...        # files merged in order, as --configfile
#
# e.g. the calibration file of configs/paper.yaml (scripts/derive_resources.py --calibration)
# with a last file holding `device: cuda`.  Environment: GM_STAGE_JOBS (train or evaluate
# processes at once, default 1: then each cost is the stage's own; more share the GPU and the
# costs are upper bounds), GM_STAGES_SECONDS (one time guard for everything, default 480),
# OUT (where the summary and stages.tar.gz go, default /tmp/gm-cuda-stages).
# Writes $OUT/summary.txt (one line per stage: exit status and cost) and $OUT/stages.tar.gz
# (results/*/*/seed*/{train,eval}.json and logs/).  Exit status: 0 when every stage passed; 2
# before any stage for bad params, or for `device: cuda` where torch sees no CUDA device (the
# stages would fall back to the CPU, and their costs would not be the GPU's).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
[ "$#" -ge 1 ] || { echo "usage: bash scripts/cuda_stages.sh PARAMS..." >&2; exit 2; }
OUTDIR="${OUT:-/tmp/gm-cuda-stages}"
mkdir -p "$OUTDIR" logs
START=$(date +%s)
BUDGET="${GM_STAGES_SECONDS:-480}"
JOBS="${GM_STAGE_JOBS:-1}"
PY="${PYTHON:-python3}"
export GM_PARAMS="$(IFS=:; echo "$*")" GM_PROGRESS=0 PYTHONUNBUFFERED=1 PYTHON="$PY"
left() { local s=$(( BUDGET - ($(date +%s) - START) )); [ "$s" -lt 5 ] && s=5; echo "$s"; }
export -f left
export START BUDGET

# one stage: its command under what is left of the guard, its log, one summary line
stage() {
    local name="$1" log="$2"; shift 2
    mkdir -p "$(dirname "$log")"
    timeout "$(left)" "$PYTHON" -m "pipeline.$name" "$@" 2>"$log"
    local rc=$?
    echo "$name $* : exit $rc$([ "$rc" = 124 ] && echo ' (time guard)')"
    return "$rc"
}
export -f stage

# the runs, or one line naming the bad file and field (the stages' own check), before any stage
RUNS="$("$PY" -c "import sys
from gm.errors import GmError
from pipeline import params as P
try:
    p = P.load(P.files('$GM_PARAMS'))
except GmError as err:
    sys.exit(P.error_line(err, '$GM_PARAMS'))
if str(p.get('device', 'auto')).startswith('cuda'):   # the stages would fall back to the CPU
    import torch                                       # and their costs would be the CPU's
    if not torch.cuda.is_available():
        sys.exit(f\"error: $GM_PARAMS: device: {p['device']}, but torch sees no CUDA device \"
                 \"(run this on a GPU machine, or set device: cpu)\")
print('\n'.join(f'{d} {m} {s}' for d, m, s in P.runs(p)))")" || exit 2
status=0
for ds in $(echo "$RUNS" | cut -d' ' -f1 | sort -u); do
    for s in fetch prepare classifier; do
        stage "$s" "logs/$s/$ds.log" --dataset "$ds"
    done
done | tee "$OUTDIR/summary.txt"
for s in train evaluate; do
    echo "$RUNS" | xargs -P "$JOBS" -L 1 bash -c \
        'stage '"$s"' "logs/'"$s"'/$0-$1-seed$2.log" --dataset "$0" --model "$1" --seed "$2"' \
        | tee -a "$OUTDIR/summary.txt"
done
grep -q ": exit [^0]" "$OUTDIR/summary.txt" && status=1

"$PY" - "$RUNS" <<'EOF' | tee -a "$OUTDIR/summary.txt"
import json, sys
from pathlib import Path
print(f"{'run':28s} {'stage':8s} {'wall s':>8s} {'CPU s':>8s} {'RSS MB':>8s}  log p(x)")
for line in sys.argv[1].splitlines():
    ds, model, seed = line.split()
    for stage, file in (("train", "train.json"), ("evaluate", "eval.json")):
        path = Path("results", ds, model, f"seed{seed}", file)
        rec = json.loads(path.read_text()) if path.exists() else {}
        cost = rec.get("cost") or {}
        ll = (rec.get("test_log_likelihood") or {}).get("mean", "")
        print(f"{ds + '/' + model:28s} {stage:8s} {cost.get('wall_seconds', float('nan')):8.1f} "
              f"{cost.get('cpu_seconds', float('nan')):8.1f} "
              f"{cost.get('peak_rss_mb', float('nan')):8.0f}  {ll}")
EOF
tar -czf "$OUTDIR/stages.tar.gz" logs $(ls results/*/*/seed*/train.json results/*/*/seed*/eval.json 2>/dev/null)
echo "cuda_stages: $([ $status = 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - START )) s"
exit "$status"

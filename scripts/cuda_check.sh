#!/usr/bin/env bash
# One prepared check of the CUDA path (issue 17) for a GPU machine that has only a bare Python.
#
#   bash scripts/cuda_check.sh            # from anywhere; logs to $OUT (else /tmp/gm-cuda-check)
#
# 1. Python: when PyPI can be reached, a fresh virtual environment with torch, numpy, scipy,
#    scikit-learn, pandas, pyyaml, pytest and tqdm (gm/progress.py imports it) pinned from
#    constraints.txt (PyPI's torch wheel for Linux x86-64 is the CUDA build), the repository
#    installed editable without dependencies; offline (a GPU node that reaches nothing), the
#    interpreter's own packages (an image with CUDA torch: a venv made from it would not see
#    them if it is itself a venv), with any wheels of $GM_WHEELS (default <repo>/.whl) installed
#    in front of them; the repository is always on PYTHONPATH;
# 2. nvidia-smi and torch.cuda facts;
# 3. pytest -q tests/test_cuda.py -p no:cacheprovider (every model and estimator, CUDA against
#    the CPU; the benchmarks at small sizes);
# 4. benchmarks/rbm_vs_sklearn.py, hardware_fraction.py and loop_overhead.py with --device cuda
#    at their default sizes (the numbers the issue asks for), --reps $GM_BENCH_REPS (default 3).
#
# Everything runs under one time guard, $GM_CUDA_CHECK_SECONDS (default 780 s = 13 min), and
# each step under what is left of it.  Exit status: 0 when the tests and every benchmark passed.
# Logs (at most 6 files): $OUT/env.log, pytest.log, bench_<name>.log, summary.txt.
#
# Environment: PYTHON (interpreter to start from, default python3), GM_CUDA_VENV (default
# /tmp/gm-cuda-venv), GM_CUDA_INSTALL (auto, or none: install nothing), GM_WHEELS,
# GM_BENCH_REPS, GM_CUDA_CHECK_SECONDS, GM_PYTEST_ARGS (extra pytest arguments, e.g. "-x"),
# GM_FASHION_DIR (a copy of the four Fashion-MNIST IDX .gz files, default
# <repo>/.fashion-mnist: installed into /usr/share/datasets/fashion-mnist when that is missing,
# since the three benchmarks read it from there; without it they and their tests are skipped).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUDGET="${GM_CUDA_CHECK_SECONDS:-780}"
if [ -z "${GM_CUDA_CHECK_INNER:-}" ]; then          # the whole run under one time guard
    export GM_CUDA_CHECK_INNER=1 GM_CUDA_CHECK_START="$(date +%s)"
    timeout --kill-after=15 "$BUDGET" bash "${BASH_SOURCE[0]}" "$@"
    rc=$?
    [ "$rc" = 124 ] && echo "cuda_check: stopped by the ${BUDGET} s time guard" >&2
    exit "$rc"
fi

LOG="${OUT:-${TMPDIR:-/tmp}/gm-cuda-check}"
mkdir -p "$LOG"
SUMMARY="$LOG/summary.txt"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1 GM_PROGRESS=0
cd "$REPO" || exit 2

left() {   # seconds left of the budget, minus a margin for the steps after this one ($1)
    local used=$(( $(date +%s) - GM_CUDA_CHECK_START ))
    local s=$(( BUDGET - used - ${1:-0} ))
    [ "$s" -lt 10 ] && s=10
    echo "$s"
}
note() { echo "$*" | tee -a "$SUMMARY"; }

# --- 1. Python environment ----------------------------------------------------------------------
PY0="${PYTHON:-python3}"
VENV="${GM_CUDA_VENV:-/tmp/gm-cuda-venv}"
WHEELS="${GM_WHEELS:-$REPO/.whl}"
pin() {   # NAME==VERSION from constraints.txt (case-insensitive), else NAME
    local line
    line="$(grep -i "^$1==" "$REPO/constraints.txt" 2>/dev/null | head -n 1)"
    echo "${line:-$1}"
}
PKGS="$(for p in torch numpy scipy scikit-learn pandas PyYAML pytest tqdm; do pin "$p"; done)"
PY="$PY0"
{
    echo "== environment ($(date -u +%FT%TZ))"
    if [ "${GM_CUDA_INSTALL:-auto}" = none ]; then
        echo "GM_CUDA_INSTALL=none: using $PY0 and its packages"
    elif timeout 20 "$PY0" -c "import urllib.request as u; u.urlopen('https://pypi.org/simple/pip/', timeout=8)" \
            >/dev/null 2>&1 && "$PY0" -m venv "$VENV"; then
        PY="$VENV/bin/python"
        echo "PyPI reachable: a fresh venv $VENV with" $PKGS
        # shellcheck disable=SC2086
        timeout "$(left 500)" "$PY" -m pip install --quiet --disable-pip-version-check $PKGS \
            || echo "pip install failed: going on with what is installed"
        if "$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
                --no-build-isolation --ignore-requires-python -e "$REPO" >/dev/null 2>&1; then
            echo "repository installed editable (no dependencies)"
        fi
    elif compgen -G "$WHEELS/*.whl" >/dev/null; then
        # offline: the image's interpreter (often itself a venv, whose packages a new venv
        # would not see), with the carried wheels in front of its own packages
        echo "offline: the wheels of $WHEELS into $VENV-site, in front of $PY0's packages"
        "$PY0" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
            --no-compile --upgrade --target "$VENV-site" "$WHEELS"/*.whl \
            || echo "wheel install failed: going on with what is installed"
        echo "$VENV-site" >"$LOG/.sitepath"
    else
        echo "offline and no wheels: using $PY0 and its packages"
    fi
    echo "$PY" >"$LOG/.python"
} >"$LOG/env.log" 2>&1
cat "$LOG/env.log"
PY="$(cat "$LOG/.python")"
SITE="$(cat "$LOG/.sitepath" 2>/dev/null || true)"
rm -f "$LOG/.python" "$LOG/.sitepath"
# the repository itself is always importable from its root (editable install or not)
export PYTHONPATH="$REPO${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"

FASHION=/usr/share/datasets/fashion-mnist
SRC="${GM_FASHION_DIR:-$REPO/.fashion-mnist}"
if [ ! -d "$FASHION" ] && compgen -G "$SRC/*.gz" >/dev/null; then
    mkdir -p "$FASHION" && cp "$SRC"/*.gz "$FASHION"/ \
        && echo "Fashion-MNIST copied from $SRC to $FASHION" | tee -a "$LOG/env.log"
fi

# --- 2. facts -----------------------------------------------------------------------------------
{
    echo "== nvidia-smi"
    command -v nvidia-smi >/dev/null && timeout 30 nvidia-smi || echo "(no nvidia-smi)"
    echo "== python and torch"
    timeout 120 "$PY" - <<'EOF'
import sys, importlib
print("python", sys.version.split()[0], sys.executable)
for m in ("torch", "numpy", "scipy", "sklearn", "pandas", "yaml", "pytest", "tqdm"):
    try:
        print(f"{m:8s}", importlib.import_module(m).__version__)
    except Exception as e:
        print(f"{m:8s} MISSING ({type(e).__name__}: {e})")
import torch
print("torch.version.cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "| devices", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device 0:", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}",
          p.multi_processor_count, "SMs")
    print("TF32 defaults: matmul", torch.backends.cuda.matmul.allow_tf32,
          "| cudnn", torch.backends.cudnn.allow_tf32)
EOF
    echo "== Fashion-MNIST for the benchmarks: $(ls "$FASHION" 2>/dev/null | wc -l) files in $FASHION"
} 2>&1 | tee -a "$LOG/env.log"

# --- 3. tests -----------------------------------------------------------------------------------
status=0
if ! timeout 120 "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    note "CUDA IS NOT AVAILABLE to $PY: tests/test_cuda.py would only skip"
    status=1
fi
echo "== pytest tests/test_cuda.py" | tee "$LOG/pytest.log"
# shellcheck disable=SC2086
timeout "$(left 150)" "$PY" -m pytest -q tests/test_cuda.py -p no:cacheprovider -rs \
    --durations=15 ${GM_PYTEST_ARGS:-} 2>&1 | tee -a "$LOG/pytest.log"
rc=${PIPESTATUS[0]}
note "tests/test_cuda.py: exit $rc$([ "$rc" = 124 ] && echo ' (timed out)')"
[ "$rc" = 0 ] || status=1

# --- 4. benchmarks ------------------------------------------------------------------------------
for b in rbm_vs_sklearn hardware_fraction loop_overhead; do
    if [ ! -d "$FASHION" ]; then   # all three read Fashion-MNIST (benchmarks/common.py)
        note "benchmarks/$b.py: SKIPPED, no Fashion-MNIST in $FASHION (see GM_FASHION_DIR above)"
        continue
    fi
    case $b in rbm_vs_sklearn) margin=100 ;; hardware_fraction) margin=50 ;; *) margin=5 ;; esac
    echo "== benchmarks/$b.py --device cuda --reps ${GM_BENCH_REPS:-3}" | tee "$LOG/bench_$b.log"
    timeout "$(left "$margin")" "$PY" "benchmarks/$b.py" --device cuda --reps "${GM_BENCH_REPS:-3}" \
        2>&1 | tee -a "$LOG/bench_$b.log"
    rc=${PIPESTATUS[0]}
    note "benchmarks/$b.py: exit $rc$([ "$rc" = 124 ] && echo ' (timed out)')"
    [ "$rc" = 0 ] || status=1
done

note "cuda_check: $([ $status = 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - GM_CUDA_CHECK_START )) s; logs in $LOG"
exit $status

#!/usr/bin/env bash
# Set up from nothing and run the test suite (what .ci/run calls).  Extra args go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow convergence and fault tests.
# As root on Debian it also starts the single-node SLURM cluster of the cluster tests
# (scripts/slurm-up.sh; stop it with scripts/slurm-down.sh); GM_CLUSTER=0 skips that.
set -euo pipefail
cd "$(dirname "$0")/.."
GM_TEST_DEPS=1 bash scripts/setup.sh
if [ "$(id -u)" = 0 ] && [ "${GM_CLUSTER:-1}" = 1 ]; then
  if ! bash scripts/slurm-up.sh >/tmp/gm-slurm-up.log 2>&1; then
    cat /tmp/gm-slurm-up.log
    [ "${CI:-}" = true ] && { echo "local SLURM cluster failed to start"; exit 1; }
    echo "local SLURM cluster not started: the cluster tests will be skipped"
  fi
fi
export GM_PROGRESS=0
# two workers (pytest-xdist), one test file each at a time (a file's module fixtures are made
# once, its tests keep their order), the longest files first (tests/conftest.py LONG_FILES);
# GM_TEST_WORKERS=0 runs everything in this one process
.venv/bin/python -m pytest -q -n "${GM_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"

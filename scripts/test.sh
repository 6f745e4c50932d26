#!/usr/bin/env bash
# Set up from nothing and run the test suite (what .ci/run calls).  Extra args go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow convergence tests.
set -euo pipefail
cd "$(dirname "$0")/.."
GM_TEST_DEPS=1 bash scripts/setup.sh
export GM_PROGRESS=0
exec .venv/bin/python -m pytest -q "$@"

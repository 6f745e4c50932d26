#!/usr/bin/env bash
# Set up gm-bench from nothing: system packages (Debian), a virtualenv in .venv with the pinned
# dependencies (constraints.txt), the package itself, and DVC's settings.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  dpkg -s git >/dev/null 2>&1 || need+=(git)
  dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need+=(dataset-fashion-mnist)
  if [ "${GM_TEST_DEPS:-0}" = 1 ]; then  # the browser of the HTML report test
    dpkg -s chromium >/dev/null 2>&1 || need+=(chromium)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch first, pinned, so nothing later can pull a CUDA build
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e .

if [ -d .git ] || git rev-parse --git-dir >/dev/null 2>&1; then
  [ -d .dvc ] || .venv/bin/dvc init -q
  .venv/bin/dvc config core.analytics false
fi
echo "gm-bench is set up: activate with '. .venv/bin/activate'"

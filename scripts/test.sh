#!/usr/bin/env bash
# The test suite on a fresh machine: test data from Debian packages (when root with apt),
# the project venv with the test extras, ruff (lint and format check), then pytest (doctests
# included, see pyproject).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

# Real third-party data the tests read; without it those tests skip and say why.
TEST_DEBS=(labelme-examples librust-tesseract-sys-dev wordnet-base)
if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null && ! dpkg -s "${TEST_DEBS[@]}" >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${TEST_DEBS[@]}" >/dev/null
fi
pr1_venv test
# Lint and format first (a second each): config in pyproject.toml's [tool.ruff].
"$PR1_VENV/bin/ruff" check --quiet .
"$PR1_VENV/bin/ruff" format --check --quiet .
exec "$PR1_VENV/bin/python" -m pytest -q "$@"

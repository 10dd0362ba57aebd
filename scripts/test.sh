#!/usr/bin/env bash
# Install everything the test suite needs into ./.venv and tests/integration/idp, then run it all.
# Needs Python 3.11+ and Node.js 20+ (for the real OpenID provider the integration tests start).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# Compiled as shipped (setup.py): the tests run the code users run, and fail if it cannot be built.
GATEWAY_COMPILE=yes .venv/bin/python -m pip install --quiet -e '.[dev]'
(cd tests/integration/idp && npm ci --no-audit --no-fund --loglevel=error)

.venv/bin/python -m pytest "$@"

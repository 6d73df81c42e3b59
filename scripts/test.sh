#!/usr/bin/env bash
# The test command: sets up .venv if missing, then runs the default (non-slow) suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
. "$(dirname "$0")/env.sh"
exec python -m pytest "$@"

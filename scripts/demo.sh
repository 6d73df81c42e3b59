#!/usr/bin/env bash
# The main job: set up .venv and the data mixture if missing, then AdamW vs Nexus on
# the nano preset (2 seeds each) and runs/demo/report.md. Arguments go to `nexus demo`.
set -euo pipefail
. "$(dirname "$0")/env.sh"
exec nexus demo "$@"

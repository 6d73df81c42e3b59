# Sourced by scripts/demo.sh and scripts/test.sh: create .venv and install the
# project (torch 2.13.0 CPU first, so no multi-GB CUDA build is pulled), once.
# Re-installs only when pyproject.toml changes. Says what it installs as it goes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version) (first run only; about 5 minutes in all)"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
STAMP=".venv/.nexus-installed"
WANT="$(python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
# pip's own lines, one per package it fetches or installs, so a long set-up shows progress
_pip() {
  python -m pip install --progress-bar off --disable-pip-version-check "$@" 2>&1 \
    | { grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed|ERROR|error)' || true; } \
    | awk '{ print "[setup]   " (length($0) > 150 ? substr($0, 1, 150) "..." : $0); fflush() }'
}
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] 1/3 pip"
  _pip --upgrade pip
  echo "[setup] 2/3 torch==2.13.0 (the CPU build, about 200 MB)"
  _pip "torch==2.13.0"
  echo "[setup] 3/3 nexus-optim[dev] (the harness: transformers, tokenizers, scipy, lm-eval, ...)"
  _pip -e ".[dev]"
  python -c "import torch, nexus_optim, transformers; print('[setup] done: torch', torch.__version__, '| transformers', transformers.__version__, '| nexus-optim', nexus_optim.__version__)"
  echo "$WANT" > "$STAMP"
fi

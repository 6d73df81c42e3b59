# Sourced by scripts/demo.sh and scripts/test.sh: create .venv and install the
# project (torch 2.13.0 CPU first, so no multi-GB CUDA build is pulled), once.
# Re-installs only when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
STAMP=".venv/.nexus-installed"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing torch==2.13.0 (CPU) and nexus-optim[dev] into .venv"
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[dev]"
  python -c "import torch, nexus_optim, transformers; print('[setup] torch', torch.__version__, '| transformers', transformers.__version__)"
  echo "$WANT" > "$STAMP"
fi

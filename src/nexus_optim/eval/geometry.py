"""Where geometry results live: ``RUN_DIR/geometry.json``.

The file holds one entry per diagnostic, each written by its own command and replaced
on re-run (the other entries are kept):

    {"grad_sim":  {...grad_similarity result..., "checkpoint", "step", "tokens"},
     "closeness": {...closeness result...,       "checkpoint", "step", "tokens"}}

``nexus compare`` reads it (see ``nexus_optim.report.compare``). The run directory of
a checkpoint ``RUN/checkpoints/step_XXXXXX`` is ``RUN``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

GEOMETRY_FILE = "geometry.json"


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run dir or of a checkpoint inside ``RUN/checkpoints/``."""
    p = Path(path).resolve()
    if p.parent.name == "checkpoints" and (p / "model.safetensors").is_file():
        return p.parent.parent
    return p


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, obj) -> Path:
    """Atomic JSON write (NaN/inf become null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(_json_safe(obj), indent=1))
    os.replace(tmp, path)
    return path


def save_geometry(path: str | Path, key: str, result: dict) -> Path:
    """Set ``key`` in ``path`` (a geometry.json file, or a run/checkpoint dir whose
    run dir gets ``geometry.json``); other keys are kept."""
    p = Path(path)
    if p.is_dir():
        p = run_dir_of(p) / GEOMETRY_FILE
    data = json.loads(p.read_text()) if p.is_file() else {}
    data[key] = result
    return write_json(p, data)

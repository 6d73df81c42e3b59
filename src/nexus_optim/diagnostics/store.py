"""Where geometry results live: ``RUN_DIR/geometry.json``.

The file holds one entry per diagnostic, each written by its own command and replaced
on re-run (the other entries are kept):

    {"grad_sim":  {...grad_similarity result..., "checkpoint", "step", "tokens"},
     "closeness": {...closeness result...,       "checkpoint", "step", "tokens"}}

``nexus compare`` reads it (``report/runs.py``); the file name and ``run_dir_of`` live
with the other run-directory names in ``train/rundir.py``. The run directory of
a checkpoint ``RUN/checkpoints/step_XXXXXX`` is ``RUN``.
"""

from __future__ import annotations

import json
from pathlib import Path

from nexus_optim.runtime import write_json
from nexus_optim.train.rundir import (GEOMETRY_FILE, RUN_MANIFEST, is_run_dir, record_created,
                                      refuse_run_files, run_dir_of)


def save_geometry(path: str | Path, key: str, result: dict) -> Path:
    """Set ``key`` in ``path`` (a geometry.json file, or a run/checkpoint dir whose
    run dir gets ``geometry.json``); other keys are kept."""
    p = Path(path)
    if p.is_dir():
        p = run_dir_of(p) / GEOMETRY_FILE
    if p.name == GEOMETRY_FILE and is_run_dir(p.parent):
        if (p.parent / RUN_MANIFEST).is_file():
            record_created(p.parent, GEOMETRY_FILE)  # the run's: --overwrite deletes it with the run
    else:  # --out elsewhere: never inside a checkpoint or onto another run file
        refuse_run_files(p, "geometry --out")
    data = json.loads(p.read_text()) if p.is_file() else {}
    data[key] = result
    return write_json(p, data)


__all__ = ["GEOMETRY_FILE", "run_dir_of", "save_geometry"]

"""Helpers for the run-directory / checkpoint reliability tests (docs/reliability.md):
crafted pickles and checkpoint files rewritten together with their checksums."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from nexus_optim.train.checkpoint import MANIFEST, file_digest


class Evil:
    """Unpickling this runs ``touch MARKER`` (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def rewrite(ckpt: Path, name: str, data: bytes | None) -> None:
    """Replace (``data=None``: delete) a checkpoint file and update checksums.json, as an
    attacker who rewrites a whole checkpoint would: the checksums then still match."""
    manifest = json.loads((ckpt / MANIFEST).read_text())
    f = ckpt / name
    if data is None:
        f.unlink()
        manifest["files"].pop(name, None)
    else:
        f.write_bytes(data)
        manifest["files"][name] = {"size": f.stat().st_size, "sha256": file_digest(f)}
    (ckpt / MANIFEST).write_text(json.dumps(manifest))


def craft_pickle(ckpt: Path, name: str, marker: Path) -> None:
    tmp = ckpt / (name + ".crafted")
    torch.save({"optimizer": Evil(marker), "step": Evil(marker)}, tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    rewrite(ckpt, name, data)

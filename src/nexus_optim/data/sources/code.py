"""Code part: the running interpreter's standard-library sources (no tests, no site-packages)."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from nexus_optim.data.text import chunk_text, take_files

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "_bundled"}


def python_files(root: str | os.PathLike) -> list[str]:
    """Sorted ``.py`` files under ``root``, skipping test folders and installed packages."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS and not x.startswith("."))
        out.extend(os.path.join(d, f) for f in sorted(files) if f.endswith(".py") and not f.startswith("test_"))
    return sorted(out)


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")


def python_stdlib(ctx, options: dict, budget: int | None) -> list[str]:
    """Files picked in a seeded order until the budget is met, each cut into ~6 KB documents."""
    root = options.get("root") or sysconfig.get_paths()["stdlib"]
    texts = take_files(python_files(root), _read, budget, ctx.seed, "python_stdlib")
    return [d for t in texts for d in chunk_text(t, int(options.get("chunk_chars", 6000)))]

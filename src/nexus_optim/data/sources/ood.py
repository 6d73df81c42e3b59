"""Held-out (ood) parts: Metamath set.mm, Go standard library, non-English GSM problems."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from nexus_optim.data import gsm
from nexus_optim.data.fetch import apt_package
from nexus_optim.data.text import chunk_text, take_budget, take_files


def metamath(ctx, options: dict, budget: int | None) -> list[str]:
    """Chunks of a Metamath database (default ``set.mm``, Debian ``metamath-databases``)."""
    root = apt_package("metamath-databases", ctx.data_dir, "metamath", "metamath_logic")
    root = root / "usr/share/metamath/databases"
    text = (root / options.get("database", "set.mm")).read_text(encoding="utf-8", errors="replace")
    return take_budget(chunk_text(text, 3000), budget, ctx.seed, "metamath")


def _go_src_package() -> str:
    """The versioned package that Debian's ``golang-src`` metapackage points to."""
    try:
        out = subprocess.run(["apt-cache", "depends", "golang-src"], capture_output=True, text=True).stdout
        m = re.search(r"Depends:\s*(golang-[0-9.]+-src)", out)
        if m:
            return m.group(1)
    except OSError:
        pass
    return "golang-1.19-src"


def golang(ctx, options: dict, budget: int | None) -> list[str]:
    """Go standard-library sources (no tests, testdata or vendor), cut into ~6 KB documents."""
    pkg = options.get("package") or _go_src_package()
    root = apt_package(pkg, ctx.data_dir, "golang", "cpp")
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in ("testdata", "vendor"))
        files.extend(os.path.join(d, f) for f in sorted(names) if f.endswith(".go") and not f.endswith("_test.go"))
    read = lambda p: Path(p).read_text(encoding="utf-8", errors="replace")  # noqa: E731
    texts = take_files(sorted(files), read, budget, ctx.seed, "golang")
    return [d for t in texts for d in chunk_text(t, 6000)]


def gsm_multilingual(ctx, options: dict, budget: int | None) -> list[str]:
    """GSM-symbolic problems in other languages (default German and French), all templates."""
    langs = list(options.get("languages", ["deu", "fra"]))
    per = int(options.get("per_template", 6))
    docs = []
    for lang in langs:
        rows = gsm.problems_for(ctx.data_dir, lang, "all", per, ctx.seed)
        part = [gsm.format_problem(q, a, prefix=False) for _, q, a in rows]
        docs.extend(take_budget(part, None if budget is None else budget // len(langs), ctx.seed, lang))
    return docs

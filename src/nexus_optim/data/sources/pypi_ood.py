"""Held-out (ood) parts from PyPI only: set.mm-derived Hilbert-style proofs (metamath-logic)
and C++ (pybind11's headers). Nothing is imported or run: the archives are only read."""

from __future__ import annotations

import ast
import inspect
import zipfile

from nexus_optim.data.fetch import pypi_archive
from nexus_optim.data.text import chunk_text, take_budget, take_files

METAMATH_LOGIC = "metamath-logic==0.0.7"
PYBIND11 = "pybind11==2.13.6"


def metamath_logic(ctx, options: dict, budget: int | None) -> list[str]:
    """One document per theorem of ``metamath-logic``: its set.mm comment (statement,
    hypotheses, attribution) and its proof steps, read from the package's Python sources
    with ``ast`` (never executed) and written as plain text::

        theorem a1i
        a1i: ψ → φ. ...
        proof
          a1i.1: φ   (hypothesis)
          s1: φ → ( ψ → φ )   by ax-1
          s2:   by mp a1i.1, s1
    """
    docs = []
    with zipfile.ZipFile(pypi_archive(options.get("spec", METAMATH_LOGIC), ctx.data_dir)) as z:
        for name in sorted(n for n in z.namelist() if n.startswith("logic/") and n.endswith(".py")):
            tree = ast.parse(z.read(name).decode("utf-8"), filename=name)
            docs.extend(_theorem(f) for f in tree.body
                        if isinstance(f, ast.FunctionDef) and f.name.startswith("prove_"))
    return take_budget([d for d in docs if d], budget, ctx.seed, "metamath_logic")


def _theorem(f: ast.FunctionDef) -> str:
    labels: dict[str, str] = {}  # python variable -> step label
    steps, title = [], f.name[len("prove_"):]
    for st in f.body:  # the proof builder's calls, in source order
        call = getattr(st, "value", None)
        if not isinstance(call, ast.Call):
            continue
        strs = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if isinstance(call.func, ast.Name) and call.func.id == "ProofBuilder" and strs:
            title = strs[-1]
        op = call.func.attr if isinstance(call.func, ast.Attribute) else ""
        if op not in ("hyp", "ref", "mp") or not strs:
            continue
        label, stmt = strs[0], (strs[1] if len(strs) > 1 and op != "mp" else "")
        if isinstance(st, ast.Assign) and isinstance(st.targets[0], ast.Name):
            labels[st.targets[0].id] = label
        deps = ", ".join(labels.get(a.id, a.id) for a in call.args if isinstance(a, ast.Name))
        ref = next((k.value.value for k in call.keywords if k.arg == "ref" and isinstance(k.value, ast.Constant)), "")
        why = {"hyp": "(hypothesis)", "mp": f"by mp {deps}",
               "ref": "by " + " ".join(x for x in (ref, deps) if x)}[op]
        steps.append(f"  {label}: {stmt}   {why}" if stmt else f"  {label}:   {why}")
    if not steps:
        return ""
    doc = inspect.cleandoc(ast.get_docstring(f, clean=False) or "")
    return "\n".join([f"theorem {title}", *([doc] if doc else []), "proof", *steps, "qed"])


def cpp_headers(ctx, options: dict, budget: int | None) -> list[str]:
    """C++ headers of ``pybind11`` (``pybind11/include/**/*.h``), picked in a seeded order
    until the budget is met, each cut into ~6 KB documents."""
    with zipfile.ZipFile(pypi_archive(options.get("spec", PYBIND11), ctx.data_dir)) as z:
        files = sorted(n for n in z.namelist() if "/include/" in n and n.endswith((".h", ".hpp")))
        read = lambda n: z.read(n).decode("utf-8", errors="replace")  # noqa: E731
        texts = take_files(files, read, budget, ctx.seed, "cpp_headers")
    return [d for t in texts for d in chunk_text(t, 6000)]

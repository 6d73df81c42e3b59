"""Arithmetic word-free questions from a seeded generator: "What is 37 + 48?" -> "85".

Operands have ``digits`` digits (at least 10^(digits-1) for digits > 1); ``-`` never goes
negative unless ``allow_negative``; ``*`` uses a second operand of at most ``mul_digits``
digits. Few-shot examples come from a separate seed stream, never the test questions.
"""

from __future__ import annotations

from random import Random

from nexus_optim.eval.tasks.base import GenItem, TaskContext, run_generative
from nexus_optim.eval.tasks.extract import extract_arith_answer

STOP = ("\n",)
OPS = "+-*"


def _operand(rng: Random, digits: int) -> int:
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(lo, 10 ** digits - 1)


def arith_problems(n: int, seed: int = 0, digits: int = 2, ops: str = OPS, mul_digits: int = 1,
                   allow_negative: bool = False) -> list[tuple[str, str]]:
    """``n`` (question, answer) pairs, deterministic for ``seed``, no repeated question."""
    if not ops or any(o not in OPS for o in ops):
        raise ValueError(f"arith ops: {ops!r} must be a non-empty subset of {OPS!r}")
    rng = Random(f"nexus-arith:{seed}:{digits}:{ops}:{mul_digits}")
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"arith: cannot make {n} distinct problems with {digits} digits")
        op = rng.choice(ops)
        a = _operand(rng, digits)
        b = _operand(rng, mul_digits if op == "*" else digits)
        if op == "-" and a < b and not allow_negative:
            a, b = b, a
        q = f"What is {a} {op} {b}?"
        if q in seen:
            continue
        seen.add(q)
        out.append((q, str(a + b if op == "+" else a - b if op == "-" else a * b)))
    return out


def format_prompt(question: str, shots: list[tuple[str, str]] = ()) -> str:
    head = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    return f"{head}Question: {question}\nAnswer:"


def build_items(n: int, seed: int = 0, fewshot: int = 3, **gen) -> list[GenItem]:
    problems = arith_problems(n, seed, **gen)
    test_q = {q for q, _ in problems}
    shots = [p for p in arith_problems(fewshot + n, seed + 1_000_003, **gen) if p[0] not in test_q][:fewshot]
    return [GenItem(format_prompt(q, shots), a, q) for q, a in problems]


def run(ctx: TaskContext, limit: int | None = None, generate=None) -> dict:
    opts = {"fewshot": 3, "digits": 2, "max_new_tokens": 8, **ctx.options.get("arith", {})}
    max_new = opts.pop("max_new_tokens")
    items = build_items(limit or 200, ctx.seed, **opts)
    res = run_generative(ctx, items, extract_arith_answer, max_new, STOP, generate)
    return {**res, "fewshot": opts["fewshot"], "digits": opts["digits"]}

"""GSM8K-style word problems from the held-out templates (`gsm_problems("eval", ...)`).

Prompt: ``Question: ...\\nAnswer:`` (the training format of the math source), optionally after
``fewshot`` worked examples from the *train* templates. The completion is cut at a blank line
or the next "Question:"; the answer is the number after ``####`` (else the last number).
"""

from __future__ import annotations

from nexus_optim.eval.tasks.base import GenItem, TaskContext, run_generative
from nexus_optim.eval.tasks.extract import extract_gsm_answer

STOP = ("\n\n", "Question:")


def format_prompt(question: str, shots: list[str] = ()) -> str:
    """``shots`` are complete worked examples ("Question: ...\\nAnswer: ... #### 42")."""
    head = "".join(f"{s}\n\n" for s in shots)
    return f"{head}Question: {question}\nAnswer:"


def load_problems(n: int, seed: int, data_dir: str | None, language: str = "en") -> list[tuple[str, str]]:
    from nexus_optim.data.gsm import gsm_problems

    try:
        return gsm_problems("eval", n, seed, language=language, data_dir=data_dir)
    except RuntimeError as e:  # the template package is not in the data dir and cannot be fetched
        raise RuntimeError(f"gsm: the GSM templates are not available under {data_dir!r} ({e})") from e


def load_shots(k: int, seed: int, data_dir: str | None, language: str = "en") -> list[str]:
    """``k`` worked examples from the train templates, in the training document format."""
    if k <= 0:
        return []
    from nexus_optim.data.gsm import default_data_dir, format_problem, problems_for

    rows = problems_for(data_dir or default_data_dir(), language, "train", 1, seed + 7919)
    return [format_problem(q, s) for _, q, s in rows[:k]]


def build_items(problems: list[tuple[str, str]], shots: list[str] = ()) -> list[GenItem]:
    return [GenItem(format_prompt(q, shots), a, q) for q, a in problems]


def run(ctx: TaskContext, limit: int | None = None, generate=None, problems=None) -> dict:
    opts = {"fewshot": 0, "max_new_tokens": 256, "language": "en", **ctx.options.get("gsm", {})}
    data_dir = ctx.resolved_data_dir()
    if problems is None:
        problems = load_problems(limit or 200, ctx.seed, data_dir, opts["language"])
    shots = load_shots(opts["fewshot"], ctx.seed, data_dir, opts["language"])
    items = build_items(problems, shots)
    res = run_generative(ctx, items, extract_gsm_answer, opts["max_new_tokens"], STOP, generate)
    return {**res, "fewshot": opts["fewshot"], "language": opts["language"]}

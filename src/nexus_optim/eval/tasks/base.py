"""What every task gets (`TaskContext`) and the shared exact-match scorer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nexus_optim.eval.lm import greedy_generate, loglikelihoods

# prompts -> completions (already cut at the stop strings)
GenerateFn = Callable[[Sequence[str], int, Sequence[str]], list[str]]


@dataclass
class TaskContext:
    """A model and tokenizer plus the settings shared by all tasks.

    ``prepared`` (a `PreparedData`) is needed by tasks built from the run's data (``mc``);
    ``data_dir`` locates the GSM templates (default: ``prepared.data_dir`` or $NEXUS_DATA_DIR).
    """

    model: Any
    tokenizer: Any
    prepared: Any = None
    data_dir: str | None = None
    batch_size: int = 16
    max_length: int | None = None
    seed: int = 0
    bf16: bool = True
    progress: bool = False
    log_samples: bool = False
    options: dict = field(default_factory=dict)  # per-task overrides: {"gsm": {"fewshot": 3}, ...}

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str]) -> list[str]:
        return greedy_generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                               stop=stop, batch_size=self.batch_size, max_length=self.max_length,
                               bf16=self.bf16, progress=self.progress)

    def loglikelihoods(self, requests: Sequence[tuple[str, str]]):
        return loglikelihoods(self.model, self.tokenizer, requests, batch_size=self.batch_size,
                              max_length=self.max_length, bf16=self.bf16, progress=self.progress)

    def resolved_data_dir(self) -> str | None:
        if self.data_dir:
            return self.data_dir
        return getattr(self.prepared, "data_dir", None) or None


@dataclass
class GenItem:
    prompt: str
    gold: str  # canonical answer (compared with `numbers_match`)
    question: str = ""


def exact_match(items: Sequence[GenItem], completions: Sequence[str],
                extractor: Callable[[str], str | None], log_samples: bool = False) -> dict:
    """``{"n", "correct", "accuracy", "no_answer"}`` (+ ``"samples"``) of completions vs gold."""
    from nexus_optim.eval.tasks.extract import numbers_match

    if len(items) != len(completions):
        raise ValueError(f"exact_match: {len(items)} items but {len(completions)} completions")
    correct, missing, samples = 0, 0, []
    for it, comp in zip(items, completions):
        pred = extractor(comp)
        ok = numbers_match(pred, it.gold)
        correct += ok
        missing += pred is None
        if log_samples:
            samples.append({"question": it.question or it.prompt[-200:], "completion": comp,
                            "pred": pred, "gold": it.gold, "correct": ok})
    n = len(items)
    out = {"n": n, "correct": correct, "accuracy": correct / n if n else float("nan"),
           "no_answer": missing}
    if log_samples:
        out["samples"] = samples
    return out


def run_generative(ctx: TaskContext, items: Sequence[GenItem], extractor, max_new_tokens: int,
                   stop: Sequence[str], generate: GenerateFn | None = None) -> dict:
    """Greedy-decode every prompt (``generate`` overrides the model, for tests) and score it."""
    gen = generate or ctx.generate
    completions = gen([it.prompt for it in items], max_new_tokens, stop)
    return exact_match(items, completions, extractor, ctx.log_samples)

"""Data files + task YAMLs for running our offline tasks under lm-evaluation-harness.

`write_lm_eval_data(DIR, ...)` writes ``DIR/nexus_<task>.jsonl`` and, next to each, a copy of the
shipped YAML (``nexus_optim/eval/lm_eval_tasks/``) whose ``data_files`` is that absolute path.
Then (offline):

    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 lm_eval --model hf --model_args pretrained=HF_DIR \\
        --include_path DIR --tasks nexus_arith,nexus_mc --device cpu

The items are exactly those ``nexus eval --tasks arith,gsm,mc`` scores (same seed and limit).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml

from nexus_optim.data.prepare import write_jsonl

TASK_DIR = Path(__file__).with_name("lm_eval_tasks")
LM_EVAL_TASKS = ("arith", "gsm", "mc")


def task_yaml(task: str) -> Path:
    return TASK_DIR / f"nexus_{task}.yaml"


def render_yaml(task: str, data_file: str | Path, out_path: str | Path) -> Path:
    """Copy of the shipped YAML for ``task`` with ``data_files.test`` = ``data_file`` (absolute)."""
    cfg = yaml.safe_load(task_yaml(task).read_text())
    cfg["dataset_kwargs"]["data_files"]["test"] = str(Path(data_file).resolve())
    out_path = Path(out_path)
    out_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return out_path


def arith_rows(limit: int, seed: int, **opts) -> list[dict]:
    from nexus_optim.eval.tasks import arith

    o = {"fewshot": 3, "digits": 2, **opts}
    o.pop("max_new_tokens", None)
    return [{"prompt": it.prompt, "question": it.question, "answer": it.gold}
            for it in arith.build_items(limit, seed, **o)]


def gsm_rows(limit: int, seed: int, data_dir: str | None, **opts) -> list[dict]:
    from nexus_optim.eval.tasks import gsm
    from nexus_optim.eval.tasks.extract import normalize_number

    o = {"fewshot": 0, "language": "en", **opts}
    problems = gsm.load_problems(limit, seed, data_dir, o["language"])
    shots = gsm.load_shots(o["fewshot"], seed, data_dir, o["language"])
    # gold as a canonical number string ("1,500" -> "1500"): lm-eval compares strings
    return [{"prompt": it.prompt, "question": it.question, "answer": normalize_number(it.gold) or it.gold}
            for it in gsm.build_items(problems, shots)]


def mc_rows(prepared, tokenizer, limit: int, seed: int, max_length: int | None = None, **opts) -> list[dict]:
    from nexus_optim.eval.tasks import mc

    items = mc.items_for_prepared(prepared, tokenizer, limit, seed, max_length=max_length, **opts)
    return [asdict(it) for it in items]


def write_lm_eval_data(out_dir: str | Path, tasks=LM_EVAL_TASKS, limit: int = 200, seed: int = 0,
                       prepared=None, tokenizer=None, max_length: int | None = None,
                       data_dir: str | None = None, options: dict | None = None) -> dict[str, dict]:
    """Write the jsonl + YAML of each task; ``{task: {"data", "yaml", "n"}}`` or ``{"error"}``.

    ``mc`` needs ``prepared`` (a run's data); ``gsm`` needs the GSM templates in ``data_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = options or {}
    done: dict[str, dict] = {}
    for task in tasks:
        if task not in LM_EVAL_TASKS:
            raise ValueError(f"lm-eval data: no lm-eval task for {task!r}; have {', '.join(LM_EVAL_TASKS)}")
        try:
            if task == "arith":
                rows = arith_rows(limit, seed, **options.get("arith", {}))
            elif task == "gsm":
                rows = gsm_rows(limit, seed, data_dir or getattr(prepared, "data_dir", None),
                                **options.get("gsm", {}))
            else:
                if prepared is None:
                    raise ValueError("mc needs a checkpoint or run directory (its val documents)")
                rows = mc_rows(prepared, tokenizer or prepared.tokenizer(), limit, seed, max_length,
                               **options.get("mc", {}))
        except (RuntimeError, ValueError) as e:
            done[task] = {"error": str(e)}
            continue
        data = out / f"nexus_{task}.jsonl"
        write_jsonl(data, rows)
        done[task] = {"data": str(data), "yaml": str(render_yaml(task, data, out / f"nexus_{task}.yaml")),
                      "n": len(rows)}
    return done

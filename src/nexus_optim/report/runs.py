"""Reading a run directory for ``nexus compare``: its config, eval curve and the optional
geometry.json / downstream.json numbers (see ``report/compare.py``'s docstring)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from nexus_optim.train.config import read_yaml
from nexus_optim.train.logging import read_metrics
from nexus_optim.train.rundir import GEOMETRY_FILE

DOWNSTREAM_FILE = "downstream.json"
PREPARED_FILE = "prepared.json"  # the run's PreparedData (tokenizer and shard checksums)
_SKIP_LEAVES = {"n", "count", "seed", "step", "tokens", "seconds", "time", "elapsed", "total",
                "limit", "version", "seq_len", "fewshot", "digits", "n_choices", "chance",
                "correct", "no_answer", "passed", "timeouts", "samples", "traceback"}
SCORE_KEYS = ("accuracy", "acc", "acc_norm", "pass@1", "exact_match", "f1")


@dataclass
class Run:
    path: Path
    cfg: dict
    curve: list[dict]  # eval records, one per step, sorted by tokens
    downstream: dict | None = None
    geometry: dict | None = None
    label: str = ""
    extra: dict = field(default_factory=dict)  # flat numbers from geometry/downstream
    prepared: dict | None = None  # prepared.json, when the run wrote one

    @property
    def seed(self) -> int:
        return int(self.cfg.get("train", {}).get("seed", 0))

    @property
    def optimizer(self) -> str:
        return str(self.cfg.get("optim", {}).get("name", "?"))


def is_num(v) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def eval_curve(records: list[dict]) -> list[dict]:
    """Eval records (those with a ``val/`` key), one per step (the last one logged wins),
    sorted by step; ``tokens`` must be present."""
    by_step: dict[int, dict] = {}
    for r in records:
        if any(k.startswith("val/") for k in r):
            by_step[int(r["step"])] = {**by_step.get(int(r["step"]), {}), **r}
    curve = [by_step[s] for s in sorted(by_step)]
    for r in curve:
        if "tokens" not in r:
            raise ValueError(f"metrics.jsonl: eval record at step {r['step']} has no 'tokens'")
    return curve


def flatten_numeric(d, prefix: str) -> dict[str, float]:
    """Numeric leaves of a nested mapping as ``prefix/a/b`` (counts, timings, stderr skipped)."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            k = str(k)
            low = k.lower()
            if (low in _SKIP_LEAVES or low.startswith(("n_", "num_")) or "stderr" in low
                    or low.endswith(("_seconds", "_time", "_s"))):
                continue
            out.update(flatten_numeric(v, f"{prefix}/{k}"))
    elif is_num(d):
        out[prefix] = float(d)
    return out


def downstream_numbers(d: dict | None) -> dict[str, float]:
    """The comparable numbers of a downstream.json (module docstring)."""
    if not d:
        return {}
    if isinstance(d.get("results"), dict) and not isinstance(d.get("tasks"), dict):  # lm-eval
        return flatten_numeric(d["results"], "downstream")
    if not isinstance(d.get("tasks"), dict):
        return flatten_numeric(d, "downstream")
    out: dict[str, float] = {}
    for task, res in d["tasks"].items():
        if isinstance(res, dict) and "error" not in res:
            for k in SCORE_KEYS:
                if is_num(res.get(k)):
                    out[f"downstream/{task}/{k}"] = float(res[k])
    summary = (d.get("losses") or {}).get("summary") or {}
    for k, v in summary.items():
        if k.startswith("bpb/") and is_num(v):
            out[f"eval/{k}"] = float(v)
    return out


def geometry_numbers(geo: dict | None) -> dict[str, float]:
    """The scalar summaries of a geometry.json worth comparing across runs."""
    out: dict[str, float] = {}
    if not geo:
        return out
    g = geo.get("grad_sim") or {}
    for k in ("grad_sim", "grad_sim_batch"):
        if is_num(g.get(k)):
            out[f"geometry/{k}"] = float(g[k])
    c = geo.get("closeness") or {}
    for k in ("variance", "mean_distance_from_start", "mean_pairwise_distance", "cross_loss_gap"):
        if is_num(c.get(k)):
            out[f"closeness/{k}"] = float(c[k])
    return out


def load_run(run_dir: str | Path) -> Run:
    """Read config.yaml, metrics.jsonl and the optional geometry/downstream files."""
    p = Path(run_dir)
    if not (p / "config.yaml").is_file() or not (p / "metrics.jsonl").is_file():
        raise ValueError(f"compare: {str(p)!r} is not a run directory (needs config.yaml and metrics.jsonl)")
    cfg = read_yaml(p / "config.yaml", "compare") or {}  # limits; duplicate keys refused
    curve = eval_curve(read_metrics(p))
    if not curve:
        raise ValueError(f"compare: {str(p)!r} has no eval records in metrics.jsonl")
    run = Run(p, cfg, curve)
    if (p / PREPARED_FILE).is_file():
        try:
            run.prepared = json.loads((p / PREPARED_FILE).read_text())
        except ValueError:
            run.prepared = None
    if (p / DOWNSTREAM_FILE).is_file():
        run.downstream = json.loads((p / DOWNSTREAM_FILE).read_text())
    if (p / GEOMETRY_FILE).is_file():
        run.geometry = json.loads((p / GEOMETRY_FILE).read_text())
    run.extra = {**geometry_numbers(run.geometry), **downstream_numbers(run.downstream)}
    return run

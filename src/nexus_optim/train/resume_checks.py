"""What a resumed run must keep (``--resume``; called by ``train/rundir.py``): its config,
but for the keys in RESUME_MAY_CHANGE (`check_resume`), and its lr schedule so far when
``train.steps`` changes. The data check is `check_resume_data` (``train/run_data.py``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from nexus_optim.train.checkpoint import _STEP_DIR, CheckpointError

#: config keys that may differ on --resume: run length, cadence, where/how it runs.
#: Everything else (optimizer, schedule, model, data, seed, tokens per step) is refused.
RESUME_MAY_CHANGE = (
    "train.steps", "train.eval_every", "train.eval_tokens", "train.eval_batch_size",
    "train.grad_sim_batches", "train.ckpt_every", "train.keep_checkpoints", "train.log_every",
    "train.device", "train.progress", "train.export_hf", "train.threads", "train.out_dir",
    "model.compile", "data.data_dir",
)


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def _normalized(d: dict) -> dict:
    """A config dict with every schema default filled in (old checkpoints may lack keys
    added since) and YAML-normalized values, without validating anything."""
    from nexus_optim.data.config import DataConfig, SourceConfig
    from nexus_optim.train.config import _SECTIONS

    d = yaml.safe_load(yaml.safe_dump(d, sort_keys=False)) or {}
    out: dict = {}
    for name, cls in _SECTIONS.items():
        sec = d.get(name)
        out[name] = {**_defaults(cls), **(sec if isinstance(sec, dict) else {})}
    data = d.get("data") if isinstance(d.get("data"), dict) else {}
    out["data"] = {**{k: v for k, v in _defaults(DataConfig).items() if k != "sources"}, **data}
    sources = data.get("sources")
    if isinstance(sources, list):
        src_defaults = _defaults(SourceConfig)
        out["data"]["sources"] = [{**src_defaults, **s} if isinstance(s, dict) else s for s in sources]
    else:
        out["data"]["sources"] = yaml.safe_load(yaml.safe_dump(
            [dataclasses.asdict(s) for s in DataConfig().sources]))
    return yaml.safe_load(yaml.safe_dump(out, sort_keys=False))


def config_differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every leaf that differs."""
    out: list[tuple[str, object, object]] = []

    def walk(a, b, key):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                sub = f"{key}.{k}" if key else str(k)
                if k not in a or k not in b:
                    out.append((sub, a.get(k, "<absent>"), b.get(k, "<absent>")))
                else:
                    walk(a[k], b[k], sub)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{key}[{i}]")
        elif a != b:
            out.append((key, a, b))

    walk(old, new, "")
    return out


def _may_change(key: str) -> bool:
    return key in RESUME_MAY_CHANGE


def check_resume(ckpt: Path, cfg) -> None:
    """Refuse to resume ``ckpt`` with a config that changes what the run is."""
    from nexus_optim.train.config import read_yaml

    try:
        old = read_yaml(ckpt / "config.yaml", "checkpoint")  # limits; duplicate keys refused
    except ValueError as e:
        raise CheckpointError(f"checkpoint: {e}") from None
    if not isinstance(old, dict):
        raise CheckpointError(f"checkpoint: {str(ckpt / 'config.yaml')!r} does not hold a config mapping")
    diffs = [d for d in config_differences(_normalized(old), _normalized(cfg.to_dict()))
             if not _may_change(d[0])]
    if not diffs:
        _check_schedule_length(ckpt, _normalized(old), cfg)
    if diffs:
        shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs[:4])
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise ValueError(
            f"--resume: the config differs from checkpoint {str(ckpt)!r} in {shown}{more}; "
            f"resuming may change only {', '.join(RESUME_MAY_CHANGE)}; to change anything else "
            "start a new run (another train.out_dir, or --overwrite)")


def _check_schedule_length(ckpt: Path, old: dict, cfg) -> None:
    """``train.steps`` may change on resume only where the lr schedule the run has followed
    so far (and its next step) stays the same: a constant schedule, a wsd one before its
    decay. A cosine run re-sized would jump its lr: refused."""
    from nexus_optim.train.schedules import lr_multiplier

    before, now = old["train"].get("steps"), cfg.train.steps
    m = _STEP_DIR.match(ckpt.name)
    if before == now or not isinstance(before, int) or m is None:
        return
    if now < int(m.group(1)):
        raise ValueError(f"--resume: train.steps={now} is below the step of checkpoint "
                         f"{str(ckpt)!r} ({int(m.group(1))}): nothing would be trained; "
                         f"resume with train.steps >= {int(m.group(1))}")
    s = cfg.schedule
    for t in range(int(m.group(1)) + 1):  # the multipliers of the steps taken and the next
        a = lr_multiplier(t, before, s.kind, s.warmup_steps, s.min_lr_ratio, s.decay_fraction)
        b = lr_multiplier(t, now, s.kind, s.warmup_steps, s.min_lr_ratio, s.decay_fraction)
        if abs(a - b) > 1e-12 * max(1.0, abs(a)):
            raise ValueError(
                f"--resume: train.steps {before} -> {now} re-sizes the {s.kind} lr schedule that "
                f"checkpoint {str(ckpt)!r} has followed (its lr multiplier at step {t + 1} would "
                f"be {b:.6g}, not {a:.6g}); resume with train.steps={before}, or start a new run "
                "(train.steps may grow on resume only for a constant schedule, or a wsd one "
                "before its decay)")

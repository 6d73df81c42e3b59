"""Which runs are the same experiment (labels, groups) and whether runs can be compared
at all (same data, each run once)."""

from __future__ import annotations

import json
from pathlib import Path

from nexus_optim.report.runs import Run, is_num

# config keys that do not make two runs different experiments
IGNORED_KEYS = {
    "train.seed", "train.out_dir", "train.progress", "train.device", "train.threads",
    "train.export_hf", "train.ckpt_every", "train.keep_checkpoints", "train.log_every",
    "train.eval_every", "train.eval_batch_size", "train.grad_sim_batches", "train.inner_sync",
    "model.compile", "model.init_seed", "data.data_dir",
}


def flat_cfg(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "model.overrides":
            out.update(flat_cfg(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True, default=str)
    return out


def base_label(cfg: dict) -> str:
    """Optimizer name plus its defining settings, e.g. ``nexus(global,trajectory,gamma=0.05)``."""
    o = cfg.get("optim", {})
    name = o.get("name", "?")
    g = f"gamma={o.get('inner_lr'):g}" if is_num(o.get("inner_lr")) else "gamma=?"
    follows = ",gamma~lr" if o.get("inner_lr_follows_lr") else ""
    if name == "nexus":
        return f"nexus({o.get('inner_norm')},{o.get('outer_grad')},{g}{follows})"
    if name in ("fish", "random-control"):
        return f"{name}({g}{follows})"
    return str(name)


def assign_labels(runs: list[Run]) -> None:
    """Set ``run.label``: base label + the settings that distinguish same-label groups."""
    sigs = {}
    for r in runs:
        flat = {k: v for k, v in flat_cfg(r.cfg).items() if k not in IGNORED_KEYS}
        sigs[id(r)] = flat
    by_base: dict[str, list[Run]] = {}
    for r in runs:
        by_base.setdefault(base_label(r.cfg), []).append(r)
    for base, members in by_base.items():
        distinct = {json.dumps(sigs[id(r)], sort_keys=True) for r in members}
        if len(distinct) == 1:
            for r in members:
                r.label = base
            continue
        keys = sorted({k for r in members for k in sigs[id(r)]})
        differing = [k for k in keys if len({sigs[id(r)].get(k) for r in members}) > 1]
        for r in members:
            parts = []
            for k in differing:
                short = k.split(".")[-1]
                if sum(1 for kk in differing if kk.split(".")[-1] == short) > 1:
                    short = k
                v = sigs[id(r)].get(k, "null")
                parts.append(f"{short}={json.loads(v) if v != 'null' else None}")
            r.label = f"{base}[{','.join(parts)}]"


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """label -> runs (sorted by seed); labels in order: AdamW first, then alphabetical."""
    assign_labels(runs)
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    order = sorted(groups, key=lambda l: (groups[l][0].optimizer != "adamw", l))
    return {l: sorted(groups[l], key=lambda r: (r.seed, str(r.path))) for l in order}


# --------------------------------------------------------------------------- sanity checks
def _data_keys(cfg: dict) -> dict[str, str]:
    """The data settings that decide what a loss is measured on (weights and data_dir excluded)."""
    data = dict(cfg.get("data") or {})
    data.pop("data_dir", None)
    sources = data.pop("sources", None)
    out = {f"data.{k}": json.dumps(v, sort_keys=True, default=str) for k, v in data.items()}
    if isinstance(sources, list):
        for i, src in enumerate(sources):
            src = dict(src) if isinstance(src, dict) else {"value": src}
            src.pop("weight", None)
            out[f"data.sources[{i}]"] = json.dumps(src, sort_keys=True, default=str)
        out["data.sources"] = str(len(sources))
    return out


def mixture_weights(cfg: dict) -> dict:
    return {s.get("name"): s.get("weight", 1.0) for s in (cfg.get("data") or {}).get("sources") or []
            if isinstance(s, dict)}


def check_same_data(runs: list[Run]) -> list[str]:
    """Problems that make the runs' losses incomparable (empty list: same data). Checks the
    config's data section and, when both runs wrote a prepared.json, the tokenizer's and the
    val shards' checksums."""
    problems = []
    ref = runs[0]
    ref_keys = _data_keys(ref.cfg)
    for r in runs[1:]:
        keys = _data_keys(r.cfg)
        for k in sorted(set(ref_keys) | set(keys)):
            if ref_keys.get(k) != keys.get(k):
                problems.append(f"{k} is {ref_keys.get(k, 'absent')} in {str(ref.path)!r} but "
                                f"{keys.get(k, 'absent')} in {str(r.path)!r}")
                break
        a, b = ref.prepared or {}, r.prepared or {}
        if a.get("tokenizer_sha256") and b.get("tokenizer_sha256"):
            if a["tokenizer_sha256"] != b["tokenizer_sha256"]:
                problems.append(f"the tokenizers differ (sha256 of tokenizer.json) between {str(ref.path)!r} "
                                f"and {str(r.path)!r}")
            else:
                va = {s: c.get("val") for s, c in (a.get("checksums") or {}).items()}
                vb = {s: c.get("val") for s, c in (b.get("checksums") or {}).items()}
                if va and vb and va != vb:
                    bad = sorted(s for s in set(va) | set(vb) if va.get(s) != vb.get(s))
                    problems.append(f"the val data of {', '.join(bad)} differs (shard sha256) between "
                                    f"{str(ref.path)!r} and {str(r.path)!r}")
    return problems


#: the config keys that decide the model a loss is measured with
MODEL_KEYS = ("model.preset", "model.overrides", "model.seq_len")


def check_same_model(runs: list[Run]) -> list[str]:
    """Differences in the model (preset, overrides, sequence length) between the first run
    and each other one, naming both runs and the key (empty list: the same model)."""
    def keys(r: Run) -> dict:
        m = r.cfg.get("model") or {}
        return {k: json.dumps(m.get(k.split(".", 1)[1]), sort_keys=True, default=str) for k in MODEL_KEYS}

    ref, out = keys(runs[0]), []
    for r in runs[1:]:
        diff = [f"{k} {ref[k]} in {str(runs[0].path)!r} but {v} in {str(r.path)!r}"
                for k, v in keys(r).items() if v != ref[k]]
        out += diff[:1]
    return out


def check_distinct(run_dirs: list[Path], runs: list[Run]) -> None:
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        key = d.resolve()
        if key in seen:
            raise ValueError(f"compare: run {str(d)!r} is given twice (as {str(seen[key])!r} and {str(d)!r}); "
                             f"each run may appear once")
        seen[key] = d
    sigs: dict[str, Run] = {}
    for r in runs:
        flat = {k: v for k, v in flat_cfg(r.cfg).items() if k not in IGNORED_KEYS or k == "train.seed"}
        sig = json.dumps([flat, r.curve], sort_keys=True, default=str)
        if sig in sigs:
            raise ValueError(f"compare: {str(sigs[sig].path)!r} and {str(r.path)!r} have the same config and "
                             f"identical metrics (the same run copied?); each run may appear once")
        sigs[sig] = r

"""Export a checkpoint as a Hugging Face model directory (for lm-evaluation-harness & co).

``OUT`` gets ``config.json`` + ``model.safetensors`` (``save_pretrained``), the tokenizer
(``tokenizer.json``, ``tokenizer_config.json``) and ``nexus_export.json`` (where it came from).
The tokenizer gets a post-processor that puts EOS in front of every text (as the BOS token):
training documents always follow an EOS, so ``AutoTokenizer`` users (lm-eval's ``hf`` model)
score exactly what `nexus_optim.eval.lm` scores. ``model_max_length`` is the training
``seq_len``.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_eos_prefix(tokenizer) -> None:
    """Make ``tokenizer(text)`` (add_special_tokens=True) start with the EOS token."""
    from tokenizers import processors

    eos, eos_id = tokenizer.eos_token, int(tokenizer.eos_token_id)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{eos} $A", pair=f"{eos} $A {eos} $B", special_tokens=[(eos, eos_id)])
    tokenizer.bos_token = eos


def export_hf(model, tokenizer, out_dir: str | Path, max_length: int | None = None,
              eos_prefix: bool = True, meta: dict | None = None) -> Path:
    """``save_pretrained`` of model and tokenizer into ``out_dir``; returns the path."""
    import copy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = copy.deepcopy(tokenizer)
    if eos_prefix:
        add_eos_prefix(tok)
    if max_length:
        tok.model_max_length = int(max_length)
    eos = int(tok.eos_token_id)
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else eos)
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None:
            cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id = eos, eos, pad
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "nexus_export.json").write_text(json.dumps(meta or {}, indent=2, default=str))
    return out


def export_checkpoint(path: str | Path, out_dir: str | Path, data_dir: str | Path | None = None,
                      prepare: bool = False) -> Path:
    """`export_hf` of a checkpoint directory or a run directory's newest usable checkpoint
    (weights, config and the run's tokenizer only; ``data_dir`` / ``prepare`` as for
    `train.artifacts.load_trained`)."""
    from nexus_optim.train.artifacts import load_trained, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    model, cfg, prepared, state = load_trained(ckpt, data_dir=data_dir, prepare=prepare)
    meta = {"checkpoint": str(ckpt.resolve()), "step": state.get("step"),
            "tokens": state.get("tokens"), "preset": cfg.model.preset, "seq_len": cfg.model.seq_len}
    return export_hf(model.float(), prepared.tokenizer(), out_dir, max_length=cfg.model.seq_len, meta=meta)

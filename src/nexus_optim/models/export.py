"""Export a model and its tokenizer as a Hugging Face model directory (lm-evaluation-harness & co).

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

"""Export a model and its tokenizer as a Hugging Face model directory (lm-evaluation-harness & co).

``OUT`` gets ``config.json`` + ``model.safetensors`` (``save_pretrained``), the tokenizer
(``tokenizer.json``, ``tokenizer_config.json``) and ``nexus_export.json`` (where it came from).
The tokenizer gets a post-processor that puts EOS in front of every text (as the BOS token):
training documents always follow an EOS, so ``AutoTokenizer`` users (lm-eval's ``hf`` model)
score exactly what `nexus_optim.eval.lm` scores. ``model_max_length`` is the training
``seq_len``.

``OUT`` must be new, empty, or a previous export (`check_export_dir`): files of your own
are never overwritten, and a model directory never mixes two exports' files. The export
is written beside ``OUT`` under a temporary name and renamed into place (a previous
export is renamed away first, then deleted), so ``OUT`` is one whole export or the old one.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

EXPORT_INFO = "nexus_export.json"
#: what ``save_pretrained`` of a model and a fast tokenizer writes (sharded weights included)
EXPORT_PATTERNS = ("*.json", "*.safetensors", "tokenizer.*", "*.txt", "*.model")


def check_export_dir(out_dir: str | Path) -> None:
    """One-line ValueError unless ``out_dir`` is new, an empty directory, or a previous
    export (``nexus_export.json`` and only files that an export writes)."""
    out = Path(out_dir)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"export: {str(out)!r} exists and is not a directory; choose a new or "
                         "empty directory")
    if not out.exists():
        return
    entries = sorted(out.iterdir())
    if not entries:
        return
    foreign = [e.name for e in entries if e.is_symlink() or not e.is_file()
               or not any(fnmatch.fnmatch(e.name, pat) for pat in EXPORT_PATTERNS)]
    if not (out / EXPORT_INFO).is_file() or foreign:
        shown = ", ".join((foreign or [e.name for e in entries])[:5])
        raise ValueError(f"export: {str(out)!r} is not empty and is not a previous nexus export "
                         f"(it holds {shown}); nothing was written: choose a new or empty directory")


def add_eos_prefix(tokenizer) -> None:
    """Make ``tokenizer(text)`` (add_special_tokens=True) start with the EOS token."""
    from tokenizers import processors

    eos, eos_id = tokenizer.eos_token, int(tokenizer.eos_token_id)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{eos} $A", pair=f"{eos} $A {eos} $B", special_tokens=[(eos, eos_id)])
    tokenizer.bos_token = eos


def export_hf(model, tokenizer, out_dir: str | Path, max_length: int | None = None,
              eos_prefix: bool = True, meta: dict | None = None) -> Path:
    """``save_pretrained`` of model and tokenizer into ``out_dir`` (new, empty or a previous
    export: `check_export_dir`; written beside it and renamed into place); returns the path."""
    out = Path(out_dir)
    check_export_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _save(model, tokenizer, tmp, max_length, eos_prefix, meta)
        check_export_dir(out)  # again: something may have appeared there meanwhile
        old = None
        if out.exists() and any(out.iterdir()):
            old = out.with_name(f".{out.name}.tmp-old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)  # onto a missing or empty directory
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save(model, tokenizer, out: Path, max_length, eos_prefix, meta) -> None:
    import copy

    out.mkdir(parents=True)
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
    (out / EXPORT_INFO).write_text(json.dumps(meta or {}, indent=2, default=str))

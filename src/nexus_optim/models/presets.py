"""LLaMA-style model presets on HF ``transformers`` (configuration only, no model code).

Parameter counts (vocab 4096 for nano/micro, 32000 above, embeddings tied for
the two small ones) are approximate: nano ~1.3M, micro ~5.8M, 130m ~134M,
350m ~370M, 1b ~1.1B, 3b ~3.4B.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "nano": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, intermediate_size=352, tie_word_embeddings=True),
    "micro": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=8, intermediate_size=688, tie_word_embeddings=True),
    "130m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12, intermediate_size=2048, tie_word_embeddings=False),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, intermediate_size=2736, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, intermediate_size=5632, tie_word_embeddings=False),
    "3b": dict(hidden_size=3200, num_hidden_layers=26, num_attention_heads=32,
               num_key_value_heads=32, intermediate_size=8640, tie_word_embeddings=False),
}


# set by the harness, never by model.overrides
FIXED_KEYS = {"vocab_size": "it comes from the tokenizer (data.vocab_size or data.tokenizer)"}
# accepted besides LlamaConfig's own fields (older spellings transformers still converts)
_LEGACY = {"rope_theta": float, "rope_scaling": dict | None}
_POSITIVE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "head_dim", "pretraining_tp")


def override_fields() -> dict[str, Any]:
    """LlamaConfig's own fields (plus legacy aliases) -> annotated type (``Any`` if unknown)."""
    from transformers import LlamaConfig

    own = set(vars(LlamaConfig).get("__annotations__", {}))
    out: dict[str, Any] = {}
    for name, p in inspect.signature(LlamaConfig.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or (own and name not in own):
            continue
        ann = p.annotation
        if ann is inspect.Parameter.empty:  # unannotated (older transformers): the default's type
            ann = Any if p.default is None or p.default is inspect.Parameter.empty else type(p.default)
        out[name] = ann
    for name, ann in _LEGACY.items():
        out.setdefault(name, ann)
    return out


def _type_ok(value: Any, ann: Any) -> bool:
    if ann is Any or ann is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(ann))
    if ann is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(ann)
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(ann)
        return isinstance(value, (list, tuple)) and (not args or all(_type_ok(v, args[0]) for v in value))
    if origin is dict or ann is dict or typing.is_typeddict(ann):
        return isinstance(value, dict)
    if origin is not None:
        ann = origin
    try:
        return isinstance(value, ann)
    except TypeError:  # an annotation isinstance cannot check
        return True


def _type_name(ann: Any) -> str:
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def check_overrides(overrides: Any, preset: str | None = None, seq_len: int | None = None,
                    vocab_size: int = 4096) -> None:
    """Validate ``model.overrides``: keys are LlamaConfig fields (``vocab_size`` excluded),
    values have the field's type, are finite, sizes positive; with ``preset`` the resulting
    LlamaConfig is built once so architecture errors (e.g. heads not dividing hidden_size)
    surface now. ``seq_len`` must fit ``max_position_embeddings``. One-line ValueErrors
    naming the key."""
    if not isinstance(overrides, dict):
        raise ValueError(f"model.overrides: expected a mapping of LlamaConfig fields, got {type(overrides).__name__}")
    if not overrides:
        return
    fields = override_fields()
    for key, value in overrides.items():
        where = f"model.overrides.{key}"
        if key in FIXED_KEYS:
            raise ValueError(f"{where}: cannot be overridden: {FIXED_KEYS[key]}")
        if key not in fields:
            allowed = ", ".join(sorted(k for k in fields if k not in FIXED_KEYS))
            raise ValueError(f"{where}: not a LlamaConfig field; allowed: {allowed}")
        if isinstance(value, str) and not _type_ok(value, fields[key]) and _type_ok(1.5, fields[key]):
            try:  # YAML reads 1e5 as a str
                value = overrides[key] = float(value)
            except ValueError:
                pass
        if not _type_ok(value, fields[key]):
            raise ValueError(f"{where}: expected {_type_name(fields[key])}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: must be finite, got {value!r}")
        if key in _POSITIVE and value is not None and value <= 0:
            raise ValueError(f"{where}: must be > 0, got {value!r}")
        if key == "rms_norm_eps" and value <= 0:
            raise ValueError(f"{where}: must be > 0, got {value!r}")
        if key == "attention_dropout" and value is not None and not 0 <= value < 1:
            raise ValueError(f"{where}: must be in [0, 1), got {value!r}")
        if key == "hidden_act":
            from transformers.activations import ACT2FN

            if value not in ACT2FN:
                raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(repr, sorted(ACT2FN)))}")
    mpe = overrides.get("max_position_embeddings")
    if seq_len is not None and mpe is not None and seq_len > mpe:
        raise ValueError(f"model.seq_len: {seq_len} is above model.overrides.max_position_embeddings={mpe}")
    if preset in PRESETS:
        try:
            _build_config(preset, vocab_size, seq_len or 128, overrides)
        except Exception as e:  # transformers' own validators: keep their last line
            lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()] or [type(e).__name__]
            last = re.sub(r"^\w+(Error|Exception): ", "", lines[-1])
            raise ValueError(f"model.overrides: {last}") from None


def _build_config(preset: str, vocab_size: int, max_seq_len: int, overrides: dict):
    from transformers import LlamaConfig

    kwargs = dict(PRESETS[preset], vocab_size=vocab_size, max_position_embeddings=max_seq_len,
                  rms_norm_eps=1e-5, rope_theta=10000.0, attention_bias=False,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def llama_config(preset: str, vocab_size: int, max_seq_len: int, **overrides: Any):
    """A ``LlamaConfig`` for ``preset`` (one of ``PRESETS``), SDPA attention; ``overrides``
    are checked by `check_overrides`."""
    if preset not in PRESETS:
        raise ValueError(
            f"model.preset: {preset!r} is not one of " + ", ".join(repr(k) for k in PRESETS)
        )
    check_overrides(overrides, seq_len=max_seq_len)
    config = _build_config(preset, vocab_size, max_seq_len, overrides)
    config._attn_implementation = "sdpa"
    return config


def build_model(preset: str, vocab_size: int, max_seq_len: int, seed: int = 0, **overrides: Any):
    """A freshly initialised ``LlamaForCausalLM`` (deterministic for ``seed``)."""
    import torch
    from transformers import LlamaForCausalLM

    config = llama_config(preset, vocab_size, max_seq_len, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def count_params(model) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

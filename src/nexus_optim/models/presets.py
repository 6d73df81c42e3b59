"""LLaMA-style model presets on HF ``transformers`` (configuration only, no model code).

Parameter counts (vocab 4096 for nano/micro, 32000 above, embeddings tied for
the two small ones) are approximate: nano ~1.3M, micro ~5.8M, 130m ~134M,
350m ~370M, 1b ~1.1B, 3b ~3.4B.
"""

from __future__ import annotations

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


def llama_config(preset: str, vocab_size: int, max_seq_len: int, **overrides: Any):
    """A ``LlamaConfig`` for ``preset`` (one of ``PRESETS``), SDPA attention."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ValueError(
            f"model.preset: {preset!r} is not one of " + ", ".join(repr(k) for k in PRESETS)
        )
    kwargs = dict(PRESETS[preset], vocab_size=vocab_size, max_position_embeddings=max_seq_len,
                  rms_norm_eps=1e-5, rope_theta=10000.0, attention_bias=False,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    kwargs.update(overrides)
    config = LlamaConfig(**kwargs)
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

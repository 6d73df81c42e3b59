"""LLaMA presets built on transformers."""

from nexus_optim.models.presets import PRESETS, build_model, count_params, llama_config

__all__ = ["PRESETS", "build_model", "count_params", "llama_config"]

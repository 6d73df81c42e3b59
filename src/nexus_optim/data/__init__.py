"""Data pipeline: sources -> documents -> byte-level BPE -> memmap shards -> mixture sampler.

Heavy modules (tokenizers, transformers, torch) load lazily on first attribute access.
"""

from nexus_optim.data.config import DEFAULT_SOURCES, DataConfig, SourceConfig

_LAZY = {
    "prepare_data": "prepare", "PreparedData": "prepare",
    "MixtureSampler": "sampler", "MicroBatch": "sampler",
    "iter_eval_windows": "windows",
    "train_bpe": "tokenizer", "load_tokenizer": "tokenizer",
    "gsm_problems": "gsm", "gsm_template_split": "gsm",
}

__all__ = ["DEFAULT_SOURCES", "DataConfig", "SourceConfig", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"nexus_optim.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nexus_optim.data' has no attribute {name!r}")

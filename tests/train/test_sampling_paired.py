"""``train.sampling=mixed-paired`` is a control paired by data with a homogeneous run: every
outer step sees the same windows, re-split so each micro-batch mixes sources. For an
accumulating optimizer (AdamW: the outer gradient is the mean over all rows of the step)
the split cannot matter, so the two runs agree up to float summation order; a run with
plain ``mixed`` sampling (other windows) does not."""

from __future__ import annotations

import torch

from nexus_optim.train.config import from_dict
from nexus_optim.train.loop import Trainer


def _weights(tiny_config, tmp_path, name: str, **overrides) -> list[torch.Tensor]:
    cfg = from_dict(tiny_config(**{"optim.name": "adamw", "train.steps": 4, "train.eval_every": 4,
                                   "train.ckpt_every": 0, "train.eval_tokens": 64,
                                   "train.out_dir": str(tmp_path / name)}, **overrides))
    trainer = Trainer(cfg)
    trainer.run()
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_adamw_on_paired_mixed_micro_batches_equals_homogeneous(tiny_config, tmp_path):
    homo = _weights(tiny_config, tmp_path, "homo")
    paired = _weights(tiny_config, tmp_path, "paired", **{"train.sampling": "mixed-paired"})
    mixed = _weights(tiny_config, tmp_path, "mixed", **{"train.sampling": "mixed"})
    for h, p in zip(homo, paired):
        # summation order only: 4.6e-6 measured (2026-12-04); other windows (mixed): 5.9e-2
        torch.testing.assert_close(p, h, rtol=0, atol=1e-4)
    assert max(float((m - h).abs().max()) for m, h in zip(mixed, homo)) > 1e-3  # other windows

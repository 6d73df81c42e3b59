"""torchrun entry of tests/train/test_fsdp.py: several short trainings in one process group.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/train/fsdp_runs.py CONFIG OUT_DIR VARIANT [VARIANT ...]

Each VARIANT trains CONFIG into OUT_DIR/VARIANT with the ``--set``-style overrides below,
through ``nexus_optim.train.loop`` as ``nexus train`` does, reusing the one process group
(the Trainer leaves a group it did not create alone). ``*_resume`` variants stop after
outer step 3 (``Trainer.run(until=3)``: no checkpoint at 3, the newest is step 2), then a
new Trainer resumes from that checkpoint and trains to the end.
"""

from __future__ import annotations

import sys

import torch.distributed as dist

from nexus_optim.train.config import load_config
from nexus_optim.train.loop import Trainer, train

VARIANTS = {
    "ddp": ["train.parallel=ddp"],
    "fsdp": ["train.parallel=fsdp"],
    "fsdp_resume": ["train.parallel=fsdp"],
    "fsdp_ac": ["train.parallel=fsdp", "model.activation_checkpointing=true"],
    "fsdp_bf16": ["train.parallel=fsdp", "train.bf16=true"],
    "fsdp_bf16_ac": ["train.parallel=fsdp", "train.bf16=true", "model.activation_checkpointing=true"],
    "fsdp_bf16_ac_resume": ["train.parallel=fsdp", "train.bf16=true",
                            "model.activation_checkpointing=true"],
    "fsdp_compile": ["train.parallel=fsdp", "model.compile=true"],
    "ddp_adamw": ["train.parallel=ddp", "optim.name=adamw"],
    "fsdp_adamw": ["train.parallel=fsdp", "optim.name=adamw"],
}


def main(config: str, out: str, names: list[str]) -> None:
    dist.init_process_group("gloo")
    try:
        for name in names:
            cfg = load_config(config, [*VARIANTS[name], f"train.out_dir={out}/{name}"])
            if name.endswith("_resume"):
                trainer = Trainer(cfg)
                try:
                    trainer.run(until=3)
                finally:
                    trainer.close()
                train(cfg, resume=True)
            else:
                train(cfg)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

"""Run the README's copy-paste examples.

A block is a fenced ```python block directly preceded by a line ``<!-- example: NAME -->``.
Every such block runs (in a fresh namespace, in a temporary working directory); SHRINK
maps NAME to (old, new) text replacements that make it CPU-test sized. Each ``old`` must
occur in the block, so the replacements cannot silently go stale. To add an example:
mark the block in the README and, if it is too big for the CPU suite, add its
replacements here. EXPECT lists the names that must exist (a renamed marker fails).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^<!-- example: ([\w.-]+) -->\n```python\n(.*?)^```", re.M | re.S)

_SMALL_DATA = [("(256, 128)", "(64, 32)"), ("max_seq_len=128", "max_seq_len=32"),
               ("vocab_size=4096", "vocab_size=256"), ("randint(0, 4096", "randint(0, 256")]
SHRINK: dict[str, list[tuple[str, str]]] = {
    "hf-trainer": [*_SMALL_DATA, ("max_steps=1000", "max_steps=2"),
                   ("warmup_steps=100", "warmup_steps=1"), ("save_steps=500", "save_steps=1"),
                   ("report_to=[])", "report_to=[], use_cpu=True, disable_tqdm=True)")],
    "accelerate": [*_SMALL_DATA, ("Accelerator()", "Accelerator(cpu=True)")],
    "muon": [("(32, 8, 128)", "(8, 2, 32)"), ("max_seq_len=128", "max_seq_len=32"),
             ("vocab_size=4096", "vocab_size=256"), ("randint(0, 4096", "randint(0, 256")],
    "plain": [("(256, 128)", "(64, 32)"), ("dim=256, layers=4, max_seq_len=128)",
                                             "dim=32, layers=1, max_seq_len=32)"),
              ("TinyLM(vocab_size=4096", "TinyLM(vocab_size=256"), ("randint(0, 4096", "randint(0, 256")],
    # one rank, rendezvous through a file instead of torchrun's environment
    "fsdp2-dcp": [('dist.init_process_group("gloo")',
                   'dist.init_process_group("gloo", init_method="file://" + '
                   'str(__import__("pathlib").Path("store").resolve()), rank=0, world_size=1)'),
                  ("Linear(512, 512)", "Linear(16, 16)"), ("randn(16, 512)", "randn(4, 16)")],
}
EXPECT = {"hf-trainer", "accelerate", "muon", "plain", "fsdp2-dcp"}


def examples() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, code in _BLOCK.findall(README.read_text()):
        assert name not in found, f"README: two examples named {name!r}"
        found[name] = code
    return found


def test_expected_examples_exist():
    assert EXPECT <= set(examples()), f"missing README examples: {EXPECT - set(examples())}"


def _reset_accelerate() -> None:
    try:
        from accelerate.state import AcceleratorState, GradientState
    except ImportError:
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.parametrize("name", sorted(examples()))
def test_readme_example_runs(name, tmp_path, monkeypatch):
    code = examples()[name]
    for old, new in SHRINK.get(name, []):
        assert old in code, f"README example {name!r} no longer contains {old!r} (update SHRINK)"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"readme_example_{name.replace('-', '_')}"}
    try:
        exec(compile(code, f"README.md:example:{name}", "exec"), namespace)
    finally:
        _reset_accelerate()
    check = CHECKS.get(name)
    if check is not None:
        check(namespace, tmp_path)


def _check_hf(ns, tmp_path):
    nexus = ns["trainer"]._nexus
    assert nexus.outer_steps == 2 and nexus.inner_steps == 4 and nexus.max_grad_norm == 1.0
    assert (tmp_path / "runs/hf/checkpoint-2/optimizer.pt").exists()


def _check_accelerate(ns, tmp_path):
    assert ns["nexus"].outer_steps == 2  # 64 rows / 8 = 8 micro-batches, K = 4


def _check_muon(ns, tmp_path):
    assert ns["opt"].outer_steps == 2 and (tmp_path / "nexus_muon.pt").exists()
    assert ns["opt"].outer.muon.param_groups[0] is ns["opt"].param_groups[0]


def _check_plain(ns, tmp_path):
    assert ns["opt"].outer_steps == 2 and len(ns["opt"].param_groups) == 2
    assert bool(torch.isfinite(ns["val"])) and (tmp_path / "ckpt.pt").exists()


def _check_fsdp2_dcp(ns, tmp_path):
    assert ns["opt"].outer_steps == 2 and ns["opt"].inner_step == 0
    assert (tmp_path / "ckpt/step_6/.metadata").exists()


CHECKS = {"hf-trainer": _check_hf, "accelerate": _check_accelerate, "muon": _check_muon,
          "plain": _check_plain, "fsdp2-dcp": _check_fsdp2_dcp}

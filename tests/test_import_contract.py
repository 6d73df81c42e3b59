"""``import nexus_optim`` (and ``nexus_optim.optim``) needs torch only: it works with the
harness' heavy dependencies blocked, and loads none of them. The layer contract itself is
``lint-imports`` (pyproject.toml [tool.importlinter], run by .ci/run)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HEAVY = ("transformers", "accelerate", "tokenizers", "safetensors", "scipy", "matplotlib",
         "yaml", "tqdm", "tensorboard", "lm_eval", "numpy")


def test_nexus_imports_with_heavy_dependencies_blocked():
    code = textwrap.dedent(f"""
        import sys
        for name in {HEAVY!r}:
            sys.modules[name] = None  # any import of it raises ImportError
        import torch
        import nexus_optim
        from nexus_optim import Nexus, create_optimizer
        from nexus_optim.optim import distributed, functional, recipes
        p = torch.nn.Parameter(torch.ones(3))
        opt = Nexus([p], lr=0.1, inner_lr=0.1, inner_steps=2)
        for _ in range(2):
            (p * p).sum().backward()
            opt.step()
            opt.zero_grad()
        assert opt.last_step_was_outer
        harness = sorted(m for m in sys.modules if m.startswith("nexus_optim.")
                         and not m.startswith("nexus_optim.optim"))
        assert not harness, harness
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]

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


def _private_names_of_optim() -> dict[str, set[str]]:
    """Module name -> the private names it defines: module-level ``_x`` and ``self._x``."""
    import ast
    from pathlib import Path

    import nexus_optim.optim as optim

    out = {}
    for path in sorted(Path(optim.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.col_offset == 0:
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
            elif isinstance(node, ast.Assign) and node.col_offset == 0:
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        out[path.stem] = (tree, {n for n in names if n.startswith("_") and not n.startswith("__")})
    return out


def test_no_optim_module_reads_another_modules_private_names():
    """optim/'s modules talk through arguments and public names (issue 22): none reads a
    ``_name`` that another module of optim/ defines, except through ``self``."""
    import ast

    modules = _private_names_of_optim()
    for name, (tree, _) in modules.items():
        foreign = set().union(*(own for other, (_, own) in modules.items() if other != name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in foreign and not (
                    isinstance(node.value, ast.Name) and node.value.id == "self"):
                raise AssertionError(f"optim/{name}.py line {node.lineno} reads "
                                     f"{ast.unparse(node)}, a private name of another module")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "nexus_optim.optim"):
                for alias in node.names:
                    assert not alias.name.startswith("_"), (name, node.module, alias.name)

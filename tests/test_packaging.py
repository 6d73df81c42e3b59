"""The distribution as a user gets it: ``pip install nexus-optim`` needs torch and nothing
else; the harness comes with extras. Builds the wheel and sdist from this tree
(``python -m build --no-isolation``: the dev extra brings setuptools and build, so no
download), checks their metadata and package data, then installs the wheel into a fresh
venv that sees only torch (and what torch itself requires) and runs the README's
plain-PyTorch example there."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_readme_examples import SHRINK, examples  # noqa: E402

pytestmark = pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    out, src = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("src") / "tree"
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "data", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    r = _run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(src)],
             env={**os.environ, "PIP_NO_INPUT": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def _requires(meta: str) -> tuple[list[str], dict[str, list[str]]]:
    msg = email.message_from_string(meta)
    plain, extras = [], {}
    for req in msg.get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        m = re.search(r"extra\s*==\s*['\"]([\w-]+)['\"]", marker)
        if m:
            extras.setdefault(m.group(1), []).append(spec.strip())
        else:
            plain.append(spec.strip())
    return plain, extras


def test_wheel_and_sdist_metadata_and_package_data(dist):
    with zipfile.ZipFile(dist["wheel"]) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    plain, extras = _requires(meta)
    assert [re.match(r"[\w.-]+", r).group(0) for r in plain] == ["torch"], plain
    assert {"hf", "harness", "eval", "dev"} <= set(extras), sorted(extras)
    assert any(r.startswith("transformers") for r in extras["hf"])
    assert email.message_from_string(meta)["Version"] == "0.3.0"
    tasks = [n for n in names if n.startswith("nexus_optim/eval/lm_eval_tasks/") and n.endswith(".yaml")]
    assert tasks, "the lm-eval task YAMLs are not in the wheel"
    with tarfile.open(dist["sdist"]) as t:
        snames = t.getnames()
    for task in tasks:
        assert any(n.endswith("src/" + task) for n in snames), f"{task} not in the sdist"
    assert any(n.endswith("/pyproject.toml") for n in snames) and any(n.endswith("/README.md") for n in snames)


def _torch_only_dir(root: Path) -> Path:
    """A directory holding (symlinks to) torch and the distributions torch requires, and
    nothing else: what ``pip install torch`` alone would leave in a venv."""
    root.mkdir()
    todo, seen = ["torch"], set()
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional / platform-specific requirement that is not installed
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            if "extra ==" not in marker:
                todo.append(re.match(r"\s*([\w.-]+)", spec).group(1))
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src = base / top
            if src.exists() and not (root / top).exists() and top != "__pycache__":
                (root / top).symlink_to(src)
    return root


def test_wheel_installs_with_torch_only_and_runs_the_readme_example(dist, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "torch_only.pth").write_text(str(_torch_only_dir(tmp_path / "torch_only")) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # the venv's own (old) setuptools would shadow the one torch requires
    r = _run([str(py), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], env=env)
    r = _run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(dist["wheel"])], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run([str(py), "-m", "pip", "check"], env=env)  # torch (via the .pth) satisfies the wheel
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    probe = ("import importlib.util as u, nexus_optim; "
             "print(nexus_optim.__version__, [m for m in ('transformers', 'numpy', 'yaml', 'scipy', 'accelerate') "
             "if u.find_spec(m)])")
    r = _run([str(py), "-c", probe], env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.split("\n")[0] == "0.3.0 []", r.stdout + r.stderr[-2000:]

    code = examples()["plain"]
    for old, new in SHRINK["plain"]:
        code = code.replace(old, new)
    r = _run([str(py), "-c", code + "\nprint('outer steps', opt.outer_steps)"], env=env, cwd=tmp_path)
    assert r.returncode == 0 and "outer steps 2" in r.stdout, r.stderr[-3000:]

    # the harness without its extra: one line naming it
    r = _run([str(env_dir / "bin" / "nexus"), "data", "prepare"], env=env, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.count("\n") == 1 and "pip install 'nexus-optim[harness]'" in r.stderr, r.stderr
    r = _run([str(py), "-c", "import nexus_optim.integrations"], env=env, cwd=tmp_path)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("ImportError:") and "nexus-optim[hf]" in last, r.stderr

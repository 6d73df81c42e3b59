"""Fixtures for the run-directory / checkpoint reliability tests (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def cli(capsys):
    """``cli("train", "--config", ...)`` -> (exit code, stderr) of ``nexus`` in-process."""
    from nexus_optim.cli import main

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        return rc, capsys.readouterr().err.strip()

    return run


@pytest.fixture
def config_file(tmp_path):
    """``config_file(cfg_dict)`` -> a YAML file holding it."""
    count = [0]

    def write(cfg: dict) -> Path:
        count[0] += 1
        path = tmp_path / f"cfg{count[0]}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write

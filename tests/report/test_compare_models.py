"""`nexus compare` of runs that train different models says so loudly, naming both runs and the
key (issue 21)."""

from __future__ import annotations

import warnings

import pytest
import yaml

from nexus_optim.report import compare_runs
from nexus_optim.report.compare import CompareWarning

from test_compare import make_run  # tests/report is on sys.path (rootdir conftest, prepend mode)


def _edit_model(run, **values):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"].update(values)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.parametrize("key, value", [("preset", "micro"), ("overrides", {"num_hidden_layers": 2}),
                                        ("seq_len", 256)])
def test_different_models_warn_naming_runs_and_key(tmp_path, key, value):
    a = make_run(tmp_path, "a", "adamw", 0)
    n = make_run(tmp_path, "n", "nexus", 0, ids=(5.0, 3.5, 3.0, 2.8))
    _edit_model(n, **{key: value})
    with pytest.warns(CompareWarning, match=f"the runs train different models: model.{key} ") as w:
        rep = compare_runs([a, n], tmp_path / "r", plots=False)
    msg = str(w[0].message)
    assert repr(str(a)) in msg and repr(str(n)) in msg and "\n" not in msg
    assert any(x.startswith("WARNING: the runs train different models") for x in rep["warnings"])


def test_same_model_does_not_warn(tmp_path):
    a = make_run(tmp_path, "a", "adamw", 0)
    n = make_run(tmp_path, "n", "nexus", 0, ids=(5.0, 3.5, 3.0, 2.8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompareWarning)
        rep = compare_runs([a, n], tmp_path / "r", plots=False)
    assert not rep["warnings"]

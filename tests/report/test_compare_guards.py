"""`nexus compare` refuses what it cannot compare and warns loudly on caveats (issue 13, item 16)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from nexus_optim.report import compare_runs
from nexus_optim.report.compare import CompareWarning

from test_compare import make_run  # tests/report is on sys.path (rootdir conftest, prepend mode)


def _edit_cfg(run, **sections):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for key, value in sections.items():
        section, name = key.split(".", 1)
        cfg[section][name] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


def _one_line_error(runs, out, match, **kw):
    with pytest.raises(ValueError) as e:
        compare_runs(runs, out, plots=False, **kw)
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)
    return str(e.value)


def test_same_run_twice_is_refused(tmp_path):
    a = make_run(tmp_path, "a", "adamw", 0)
    n = make_run(tmp_path, "n", "nexus", 0, ids=(5.0, 3.5, 3.0, 2.8))
    _one_line_error([a, n, str(a) + "/"], tmp_path / "r", "is given twice")
    (tmp_path / "link").symlink_to(a)
    _one_line_error([a, n, tmp_path / "link"], tmp_path / "r", "is given twice")
    copy = tmp_path / "a_copy"
    shutil.copytree(a, copy)
    _edit_cfg(copy, **{"train.out_dir": str(copy)})
    _one_line_error([a, n, copy], tmp_path / "r", "identical metrics (the same run copied?)")


@pytest.mark.parametrize("key, value", [("data.vocab_size", 8192), ("data.tokenizer", "/x/tokenizer.json"),
                                        ("data.seed", 1), ("data.val_fraction", 0.1)])
def test_different_data_is_refused(tmp_path, key, value):
    a = make_run(tmp_path, "a", "adamw", 0)
    n = make_run(tmp_path, "n", "nexus", 0, ids=(5.0, 3.5, 3.0, 2.8))
    _edit_cfg(n, **{key: value})
    msg = _one_line_error([a, n], tmp_path / "r", f"compare: the runs use different data: {key} is ")
    assert "'" + str(n) + "'" in msg
    with pytest.warns(CompareWarning, match="different data"):  # explicitly allowed: still loud
        rep = compare_runs([a, n], tmp_path / "r", plots=False, allow_different_data=True)
    assert rep["warnings"] and rep["notes"][0].startswith("WARNING: the runs use different data")


def test_different_sources_are_refused_but_weights_only_warn(tmp_path):
    a = make_run(tmp_path, "a", "adamw", 0)
    n = make_run(tmp_path, "n", "nexus", 0, ids=(5.0, 3.5, 3.0, 2.8))
    sources = yaml.safe_load((a / "config.yaml").read_text())["data"]["sources"]
    _edit_cfg(n, **{"data.sources": sources[:-1]})
    _one_line_error([a, n], tmp_path / "r", "data.sources")
    sources[0]["weight"] = 3.0
    _edit_cfg(n, **{"data.sources": sources})
    with pytest.warns(CompareWarning, match="mixture weights differ"):
        rep = compare_runs([a, n], tmp_path / "r", plots=False)
    assert any("differently weighted" in w for w in rep["warnings"])


def test_different_tokenizer_checksums_are_refused(tmp_path):
    a = make_run(tmp_path, "a", "adamw", 0)
    n = make_run(tmp_path, "n", "nexus", 0, ids=(5.0, 3.5, 3.0, 2.8))
    prep = {"tokenizer_sha256": "1" * 64, "checksums": {"prose": {"val": "v1", "train": "t1"}}}
    (a / "prepared.json").write_text(json.dumps(prep))
    (n / "prepared.json").write_text(json.dumps(dict(prep, tokenizer_sha256="2" * 64)))
    _one_line_error([a, n], tmp_path / "r", "the tokenizers differ")
    (n / "prepared.json").write_text(json.dumps(dict(prep, checksums={"prose": {"val": "v2", "train": "t1"}})))
    _one_line_error([a, n], tmp_path / "r", "the val data of prose differs")
    (n / "prepared.json").write_text(json.dumps(prep))
    assert compare_runs([a, n], tmp_path / "r", plots=False)["warnings"] == []


def test_runs_without_intermediate_evals_are_left_out_of_matched_loss(tmp_path):
    a = make_run(tmp_path, "a", "adamw", 0)
    n = make_run(tmp_path, "n", "nexus", 0, ids=(2.8,), oods=(4.6,), tokens=(400,))  # eval_every = 0
    with pytest.warns(CompareWarning, match="fewer than two evals"):
        rep = compare_runs([a, n], tmp_path / "r", plots=False)
    by = {r["dir"]: r for r in rep["runs"]}
    assert by[str(n)]["matched"] is None and by[str(a)]["matched"] is not None
    assert by[str(n)]["equal_tokens"]["val/id"] == 2.8  # the equal-token comparison keeps it
    assert "tokens at matched loss are meaningless" in (tmp_path / "r" / "report.md").read_text()

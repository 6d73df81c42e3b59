"""The comparison's paired statistics, Holm family, power and n-gram reference lines
(synthetic run directories; no training)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import stats as st

from token_arrays import prepared_from_arrays
from nexus_optim.eval.ngram import ngram_reference
from nexus_optim.report import compare_runs
from nexus_optim.report.paired import holm, min_detectable_difference

from test_compare import make_run  # tests/report is on sys.path (prepend mode)

NEXUS = "nexus(global,trajectory,gamma=0.05)"
IDS = (5.0, 4.0, 3.0, 2.5)
OODS = np.array([6.0, 5.5, 5.2, 5.0])
SEED_EFFECT = (0.0, 0.3, -0.25, 0.15)  # large between-seed spread, shared by both arms
SHIFTS = (-0.050, -0.046, -0.055, -0.049)  # small, consistent per-seed improvement


def _paired_runs(tmp_path, nexus_seeds=(0, 1, 2, 3), extra_group=False):
    dirs = [make_run(tmp_path, f"adamw{s}", "adamw", s, ids=IDS, oods=tuple(OODS + SEED_EFFECT[s]))
            for s in range(4)]
    for i, s in enumerate(nexus_seeds):
        dirs.append(make_run(tmp_path, f"nexus{s}", "nexus", s, ids=IDS,
                             oods=tuple(OODS + SEED_EFFECT[i] + SHIFTS[i])))
    if extra_group:  # a second arm, no real effect
        for s in range(4):
            dirs.append(make_run(tmp_path, f"nexusb{s}", "nexus", s, ids=IDS, inner_lr=0.3,
                                 oods=tuple(OODS + SEED_EFFECT[s] + 0.01 * (-1) ** s)))
    return dirs


def test_shared_seeds_use_the_paired_test(tmp_path):
    rep = compare_runs(_paired_runs(tmp_path), tmp_path / "rep", plots=False)
    c = rep["matched"]["comparisons"][NEXUS]["val/ood"]
    a = rep["matched"]["summary"]["val/ood"][NEXUS]["values"]
    b = rep["matched"]["summary"]["val/ood"]["adamw"]["values"]
    assert st.ttest_ind(a, b, equal_var=False).pvalue > 0.5  # Welch sees nothing
    assert c["test"] == "paired" and c["seeds"] == [0, 1, 2, 3] and c["n"] == 4
    assert c["p"] == pytest.approx(st.ttest_rel(a, b).pvalue) and c["p"] < 1e-3
    assert c["diff"] == pytest.approx(np.mean(SHIFTS))
    assert c["family"] == "primary" and c["p_holm"] == pytest.approx(c["p"])  # a family of one
    assert c["significant"] and "paired t" in c["verdict"]
    assert rep["statistics"]["design"][NEXUS] == {"paired": True, "seeds": [0, 1, 2, 3], "reason": ""}
    power = rep["statistics"]["power"][NEXUS]
    assert power["sd_diff"] == pytest.approx(np.std(SHIFTS, ddof=1))
    assert power["mde"] == pytest.approx(min_detectable_difference(power["sd_diff"], 4))
    assert power["paper_effect"] == 0.012
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Primary endpoint" in md and "paired by seed" in md and "MDE (80%)" in md


def test_holm_covers_the_primary_family_only(tmp_path):
    rep = compare_runs(_paired_runs(tmp_path, extra_group=True), tmp_path / "rep", plots=False)
    comps = rep["matched"]["comparisons"]
    other = "nexus(global,trajectory,gamma=0.3)"
    assert set(comps) == {NEXUS, other}
    raw = {l: comps[l]["val/ood"]["p"] for l in comps}
    assert {l: comps[l]["val/ood"]["p_holm"] for l in comps} == pytest.approx(holm(raw))
    assert rep["statistics"]["primary"]["members"] == [NEXUS, other]
    for section in ("matched", "equal_tokens"):
        for l, c in rep[section]["comparisons"].items():
            for m, r in c.items():
                if (section, m) != ("matched", "val/ood"):
                    assert r["family"] == "exploratory" and "p_holm" not in r, (section, l, m)
                    assert r["test"] == "paired"
    assert "exploratory" in rep["equal_tokens"]["comparisons"][NEXUS]["val/ood"]["verdict"]


def test_unshared_seeds_fall_back_to_welch(tmp_path):
    rep = compare_runs(_paired_runs(tmp_path, nexus_seeds=(10, 11, 12, 13)), tmp_path / "rep", plots=False)
    c = rep["matched"]["comparisons"][NEXUS]["val/ood"]
    a = rep["matched"]["summary"]["val/ood"][NEXUS]["values"]
    b = rep["matched"]["summary"]["val/ood"]["adamw"]["values"]
    assert c["test"] == "welch" and c["p"] == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    assert c["family"] == "primary" and "p_holm" in c  # the family holds whatever test was possible
    assert not rep["statistics"]["design"][NEXUS]["paired"] and rep["statistics"]["power"] == {}
    assert any("not paired" in n and "Welch" in n for n in rep["notes"])
    assert "unpaired (the groups share no seeds)" in (tmp_path / "rep" / "report.md").read_text()


def _write_prepared(root, runs, V=40, move=False):
    rng = np.random.default_rng(0)
    succ = rng.integers(0, V, size=(V, 2))
    toks = np.zeros(9000, np.int64)
    for i in range(1, len(toks)):
        toks[i] = succ[toks[i - 1], rng.integers(0, 2)]
    arrays = {("prose", "train"): toks[:4000], ("prose", "val"): toks[4000:5000],
              ("math", "train"): toks[5000:8000], ("math", "val"): toks[8000:8600],
              ("code", "val"): rng.integers(0, V, 400)}
    cache = root / "cache"
    cache.mkdir()
    (cache / "tokenizer.json").write_text("{}")
    prepared = prepared_from_arrays(cache, arrays, {"prose": "train", "math": "train", "code": "ood"},
                                    {"prose": 1.0, "math": 1.0, "code": 0.0}, V,
                                    tokenizer_path=str(cache / "tokenizer.json"), data_dir=str(cache))
    for run in runs:
        (run / "prepared.json").write_text(json.dumps(dataclasses.asdict(prepared)))
    if move:
        cache.rename(root / "moved")
    return prepared


def test_ngram_reference_lines(tmp_path):
    runs = _paired_runs(tmp_path / "runs")
    prepared = _write_prepared(tmp_path, runs)
    rep = compare_runs(runs, tmp_path / "rep")
    ng = rep["ngram"]
    assert ng["available"] and (ng["seq_len"], ng["max_tokens"]) == (128, 16384)
    ref = ngram_reference(prepared, 128, 16384)
    for order in ("unigram", "bigram"):
        for k in ("val/id", "val/ood", "val/prose"):
            assert ng["lines"][order][k] == pytest.approx(ref[f"ngram/{order}/{k}"])
    assert ng["lines"]["bigram"]["val/id"] < ng["lines"]["unigram"]["val/id"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Where the models stand" in md and "| bigram |" in md and "minus the bigram" in md
    assert "ood_vs_id.png" in rep["plots"]
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["ngram"]["lines"]["unigram"]["val/ood"] == pytest.approx(ref["ngram/unigram/val/ood"])


@pytest.mark.parametrize("case", ["no_prepared", "moved_cache"])
def test_ngram_lines_skipped_with_a_note(tmp_path, case):
    runs = _paired_runs(tmp_path / "runs")
    if case == "moved_cache":
        _write_prepared(tmp_path, runs, move=True)
    rep = compare_runs(runs, tmp_path / "rep")
    assert not rep["ngram"]["available"] and rep["ngram"]["lines"] == {}
    want = "no prepared.json" if case == "no_prepared" else "cannot be read"
    assert want in rep["ngram"]["note"]
    assert any(want in n for n in rep["notes"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "n-gram reference lines skipped" in md
    assert not (tmp_path / "moved" / "x").exists()  # nothing built

"""The gamma guide (report/dose.dose_report) from the dose study's decision files: the answer
follows transfer.json, every setting's row is in the table, the figure is drawn, and a
study that has not finished says so."""

from __future__ import annotations

import json

from nexus_optim.experiments.dose_design import DoseDesign, transfer
from nexus_optim.report.dose import dose_report


def _row(r, reading, schedule, cost, gain, d):
    engaged = gain >= d.similarity_margin
    return {"r": r, "reading": reading, "schedule": schedule, "n": 2, "cost": cost, "gain": gain,
            "engaged": engaged, "window": engaged and cost <= d.window_id_bpb}


def _window(rows, lr):
    return {"lr": lr, "rows": rows, "windows": [x for x in rows if x["window"]],
            "engaged": [x for x in rows if x["engaged"]]}


def test_the_guide_states_the_answer_and_every_setting(tmp_path):
    d = DoseDesign()
    root = tmp_path / "runs"
    root.mkdir()
    (root / "design.json").write_text(json.dumps(d.to_dict()))
    md = tmp_path / "guide.md"
    rep = dose_report(root, tmp_path / "out", md)
    assert "Not answered yet: the study has not finished (decisions so far: none; 0 run summaries)" in md.read_text()
    assert rep["plot"] is None
    small = [_row(r, rd, "follow", 0.005 * r, 0.03 * r, d) for r in (0.1, 0.3, 1.0) for rd in d.readings]
    large = [{**x, "window": x["r"] == 0.3 and x["reading"] == "trajectory"} for x in small]
    (root / "s-lr.json").write_text(json.dumps({"lr": 4e-3, "edge": None, "mean_end_bpb_id": {"0.002": 2.1, "0.004": 2.0}}))
    (root / "s-window.json").write_text(json.dumps(_window(small, 4e-3)))
    (root / "l-lr.json").write_text(json.dumps({"lr": 2e-3, "edge": "low", "mean_end_bpb_id": {"0.002": 1.9, "0.004": None}}))
    (root / "l-window.json").write_text(json.dumps(_window(large, 2e-3)))
    t = transfer(_window(small, 4e-3), _window(large, 2e-3))
    (root / "transfer.json").write_text(json.dumps(t))
    rep = dose_report(root, tmp_path / "out", md)
    text = md.read_text()
    # the small size's window with the largest gain: r = 1 (cost 0.005 <= 0.02, gain 0.03 >= 0.02)
    assert t["window_small"] == [1.0, "trajectory", "follow"] and t["transfers"] is False
    assert "The small size's best window r = 1 (trajectory, follow) **does not transfer**" in text
    assert "lr* is at the grid's low edge" in text and "0.004: n/a" in text
    assert text.count("| 0.3 | displacement | follow | 2 |") == 2  # both sizes' tables
    assert "| 1 | trajectory | follow | 2 | +0.0050 | +0.0300 | yes | **yes** |" in text
    assert rep["plot"] == "gamma_guide.png" and (tmp_path / "out" / "gamma_guide.png").stat().st_size > 0
    assert "- **window**: engaged and cost <= window_id_bpb" in text


def _summary(root, name, phase, arm, seed, setting, curve, gaps=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("train: {seed: %d}\n" % seed)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    (d / "run.json").write_text(json.dumps({"name": name, "phase": phase, "arm": arm, "seed": seed, "setting": setting}))
    (d / "prepared.json").write_text(json.dumps({"roles": {"a": "train", "b": "train", "o": "ood"}}))
    if gaps:
        for f, g in zip(("geometry.json", "geometry_retest.json"), gaps):
            (d / f).write_text(json.dumps({"closeness": {"cross_loss_gap": g}}))


def test_the_guide_reads_closeness_test_retest_and_the_source_spread_at_matched_mean(tmp_path):
    import numpy as np

    from nexus_optim.report.dose import closeness_retest, source_spread

    root = tmp_path / "runs"
    def curve(spread):  # val/id 3.0 -> 2.0 over 10 evals; sources a, b at val/id -+ spread
        return [{"step": s, "tokens": 10 * s, "val/id": 3.0 - 0.1 * s, "val/a": 3.0 - 0.1 * s - spread,
                 "val/b": 3.0 - 0.1 * s + spread} for s in range(1, 11)]
    gaps = [(0.60, 0.61), (0.70, 0.69), (0.65, 0.66), (0.80, 0.78)]
    _summary(root, "s-adamw/adamw_lr0.004_s0", "s-adamw", "adamw", 0, {"size": "s", "lr": 4e-3}, curve(0.1), gaps[0])
    _summary(root, "s-adamw/adamw_lr0.002_s0", "s-adamw", "adamw", 0, {"size": "s", "lr": 2e-3}, curve(0.3), gaps[1])
    _summary(root, "s-nexus/n1_s0", "s-nexus", "nexus", 0, {"size": "s", "lr": 4e-3, "r": 1.0}, curve(0.05), gaps[2])
    _summary(root, "s-nexus/n2_s1", "s-nexus", "nexus", 1, {"size": "s", "lr": 4e-3, "r": 1.0}, curve(0.05))
    rt = closeness_retest(root)
    x, y = np.array(gaps[:3]).T
    assert rt["n"] == 3 and rt["r"] == np.corrcoef(x, y)[0, 1]
    sp = source_spread(root, {"s-lr.json": {"lr": 4e-3}}, ["s", "l"])
    # std of (val/id - d, val/id + d) with ddof 1 = d sqrt(2); seed 1 has no AdamW(lr*) run: left out
    want = {"s-adamw/adamw_lr0.004_s0": 0.1, "s-adamw/adamw_lr0.002_s0": 0.3, "s-nexus/n1_s0": 0.05}
    assert set(sp) == set(want) and all(abs(sp[k] - d * 2 ** 0.5) < 1e-12 for k, d in want.items())
    assert "s-nexus/n2_s1" not in sp


def test_the_guide_counts_passes_over_each_source_per_size(tmp_path):
    from nexus_optim.report.dose import data_passes

    d = DoseDesign().to_dict()
    root = tmp_path / "runs"
    run = root / "s-adamw" / "adamw_s0"
    run.mkdir(parents=True)
    (run / "prepared.json").write_text(json.dumps({
        "roles": {"a": "train", "b": "train", "o": "ood"}, "weights": {"a": 1.0, "b": 3.0, "o": 1.0},
        "train_tokens": {"a": 1000, "b": 100_000}}))
    tokens = d["sizes"][0]["steps"] * d["inner_steps"] * d["micro_batch_size"] * d["seq_len"]
    got = data_passes(root, d)
    assert set(got) == {"s"}  # no summary of the large size yet
    assert got["s"]["least"] == "b" and got["s"]["max"] == tokens * 0.25 / 1000
    assert got["s"]["min"] == tokens * 0.75 / 100_000


def test_the_guide_links_post_hoc_runs_only_when_they_exist(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "out"
    root.mkdir()
    (root / "design.json").write_text(json.dumps(DoseDesign().to_dict()))
    md = tmp_path / "guide.md"
    dose_report(root, out, md)
    assert "posthoc.md" not in md.read_text()
    (out / "posthoc.md").write_text("# post hoc\n")
    dose_report(root, out, md)
    assert "exploratory, used by no decision): [posthoc.md](out/posthoc.md)" in md.read_text()

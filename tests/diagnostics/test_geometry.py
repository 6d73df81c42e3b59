"""Geometry diagnostics: grad-sim and closeness known answers, training-loop logging, CLI."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from nexus_optim.diagnostics.closeness import closeness, fine_tune, flat_params, load_flat
from nexus_optim.eval.losses import source_loss
from nexus_optim.eval.gradsim import grad_sim_metrics, grad_similarity
from nexus_optim.models.presets import build_model
from nexus_optim.train.config import from_dict
from nexus_optim.train.schedules import lr_multiplier

TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "intermediate_size": 32}
VOCAB, SEQ = 40, 16


def tiny_model(seed: int = 0):
    return build_model("nano", vocab_size=VOCAB, max_seq_len=SEQ, seed=seed, **TINY)


def tokens(seed: int, n: int = 600, period: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if period:  # a strongly patterned source
        return (np.arange(n) % period + rng.integers(0, 2, n)).astype(np.uint16)
    return rng.integers(0, VOCAB, n).astype(np.uint16)


def tiny_cfg(name: str = "adamw", **optim):
    return from_dict({
        "model": {"preset": "nano", "seq_len": SEQ, "overrides": TINY},
        "optim": {"name": name, "inner_steps": 2, "lr": 1e-2, **optim},
        "train": {"micro_batch_size": 2, "eval_tokens": 64, "eval_batch_size": 4, "bf16": False},
    })


# --------------------------------------------------------------------------- grad-sim
def test_grad_sim_identical_sources_cosine_one():
    model = tiny_model()
    a = tokens(1)
    data = {"a": a, "b": a.copy(), "c": tokens(2, period=7)}
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    r = grad_similarity(model, data, SEQ, batch_size=2, n_batches=3, seed=0, bf16=False)
    after = torch.rand(3)
    assert torch.equal(before, after), "grad-sim must not consume the global RNG"
    assert all(p.grad is None for p in model.parameters()), "model .grad must be untouched"
    cos = np.array(r["cos_mean_grad"])
    assert r["sources"] == ["a", "b", "c"]
    assert np.allclose(np.diag(cos), 1.0)
    assert cos[0, 1] == pytest.approx(1.0, abs=1e-5)  # a source with itself
    assert np.allclose(cos, cos.T)
    assert np.all(np.abs(cos) <= 1 + 1e-6)
    bm, bs = np.array(r["cos_batch_mean"]), np.array(r["cos_batch_std"])
    assert np.allclose(bm, bm.T) and np.allclose(bs, bs.T)
    assert r["n_pairs"][0][0] == 3 and r["n_pairs"][0][1] == 9
    # identical sources: every pair (i, j) of a x b equals a pair of a x a, or is 1 (i == j)
    assert bm[0, 1] == pytest.approx((3 * 1.0 + 6 * bm[0, 0]) / 9, abs=1e-5)
    # ... and their spread follows from a x a's three values (mean m, sample variance v):
    # the 9 values are three 1s and each a x a value twice
    m, v = bm[0, 0], bs[0, 0] ** 2
    s1, s2 = 3 + 6 * m, 3 + 2 * (2 * v + 3 * m ** 2)
    assert bs[0, 1] == pytest.approx(np.sqrt((s2 - s1 ** 2 / 9) / 8), abs=1e-5)
    off = [cos[i, j] for i in range(3) for j in range(3) if i != j]
    assert r["grad_sim"] == pytest.approx(np.mean(off))
    assert r["grad_sim"] < 1.0


def test_grad_sim_metrics_keys():
    cfg = tiny_cfg()
    cfg.train.grad_sim_batches = 2
    data = {"x": tokens(3), "y": tokens(4, period=5), "z": tokens(5)}
    prepared = types.SimpleNamespace(roles={"x": "train", "y": "train", "z": "ood"},
                                     weights={"x": 1.0, "y": 1.0, "z": 0.0},
                                     load=lambda s, split: data[s])
    m = grad_sim_metrics(tiny_model(), prepared, cfg)
    assert set(m) == {"geom/cos/x/y", "geom/grad_sim", "geom/grad_sim_batch"}
    assert m["geom/grad_sim"] == pytest.approx(m["geom/cos/x/y"])


# --------------------------------------------------------------------------- closeness
@pytest.mark.parametrize("name", ["adamw", "nexus"])
def test_closeness_identical_sources_is_zero(name):
    model = tiny_model()
    start = flat_params(model).clone()
    a, v = tokens(1, period=7), tokens(11, 200, period=7)
    cfg = tiny_cfg(name)
    r = closeness(model, cfg, {"a": a, "b": a.copy()}, {"a": v, "b": v.copy(), "o": tokens(12, 200)},
                  steps=2, seed=0, points=3)
    assert torch.equal(flat_params(model), start), "the start model must be left unchanged"
    assert r["distance_from_start"]["a"] > 0
    assert r["distance_from_start"]["a"] == pytest.approx(r["distance_from_start"]["b"])
    assert r["pairwise_distance"][0][1] == pytest.approx(0.0, abs=1e-6)
    assert r["variance"] == pytest.approx(0.0, abs=1e-10)
    assert r["displacement_cos"][0][1] == pytest.approx(1.0, abs=1e-6)
    cl = np.array(r["cross_loss"])  # rows a, b; columns a, b, o
    assert r["eval_sources"] == ["a", "b", "o"]
    assert np.allclose(cl[:, :2], cl[:, :2].T)
    assert r["cross_loss_gap"] == pytest.approx(0.0, abs=1e-6)
    # fine-tuning lowered the source's own loss
    assert cl[0, 0] < r["start_loss"]["a"]
    it = r["interpolation"]
    assert it["alphas"] == [0.0, 0.5, 1.0]
    assert it["loss"]["a"]["a"][0] == r["start_loss"]["a"]
    assert it["loss"]["a"]["o"][-1] == cl[0, 2]
    own = it["loss"]["a"]["a"]  # barrier: the largest excess over the straight line
    assert it["barrier"]["a"] == pytest.approx(max(0.0, own[1] - (own[0] + own[2]) / 2), abs=1e-12)
    # the midpoint is the loss at theta_0 + (theta_a - theta_0) / 2, evaluated independently
    ft = fine_tune(model, cfg, a, 2, seed=0, name="a").model
    probe = tiny_model()
    load_flat(probe, (start + flat_params(ft)) / 2)
    assert own[1] == pytest.approx(source_loss(probe, v, SEQ, 4, 64, torch.device("cpu"), False)[0],
                                   rel=1e-6)
    json.dumps(r)


def test_closeness_different_sources_variance_identity():
    model = tiny_model()
    data = {"a": tokens(1), "b": tokens(2, period=5), "c": tokens(3, period=9)}
    r = closeness(model, tiny_cfg(), data, {k: v[:200] for k, v in data.items()}, steps=2, points=2)
    d = np.array(r["pairwise_distance"])
    assert np.allclose(d, d.T) and np.all(d[~np.eye(3, dtype=bool)] > 0)
    # Theorem 2.2 variance = mean squared distance to the centroid = sum_ab d_ab^2 / (2 S^2)
    assert r["variance"] == pytest.approx((d ** 2).sum() / (2 * 9), rel=1e-6)
    assert r["variance"] == pytest.approx(np.mean(np.square(list(r["centroid_distance"].values()))))


# --------------------------------------------------------------------------- fixed protocol
def _two_sources():
    data = {"a": tokens(1), "b": tokens(2, period=5)}
    return data, {**{k: v[:200] for k, v in data.items()}, "o": tokens(9, 200)}


def test_closeness_fixed_protocol_ignores_run_optimizer():
    data, val = _two_sources()
    runs = {name: closeness(tiny_model(), tiny_cfg(name, inner_steps=k), data, val, steps=3,
                            lr=5e-3, points=3, protocol="fixed")
            for name, k in [("adamw", 2), ("nexus", 2), ("fish", 3)]}
    assert runs["nexus"] == runs["adamw"] == runs["fish"]  # every number, bitwise
    r = runs["nexus"]
    assert (r["protocol"], r["optimizer"], r["inner_steps"], r["schedule"]) == ("fixed", "adamw", 1, "cosine")
    assert (r["lr"], r["min_lr_ratio"], r["steps"]) == (5e-3, 0.1, 3)
    ends = [flat_params(fine_tune(tiny_model(), tiny_cfg(n), data["a"], 3, lr=5e-3, name="a",
                                  protocol="fixed").model) for n in ("adamw", "nexus")]
    assert torch.equal(*ends)
    run = closeness(tiny_model(), tiny_cfg("nexus"), data, val, steps=3, lr=5e-3, points=3)
    assert (run["protocol"], run["optimizer"], run["inner_steps"]) == ("run", "nexus", 2)
    assert run["min_lr_ratio"] is None and run["fine_tune_lr"] == [5e-3] * 3
    assert run["distance_from_start"] != r["distance_from_start"]


def test_closeness_fixed_protocol_lr_decays():
    data, val = _two_sources()
    r = closeness(tiny_model(), tiny_cfg("nexus"), data, val, steps=6, lr=1e-2, points=2,
                  protocol="fixed", min_lr_ratio=0.2)
    lrs = r["fine_tune_lr"]
    assert len(lrs) == 6 and lrs[0] == 1e-2
    assert lrs[-1] == pytest.approx(0.2 * 1e-2, rel=1e-12)
    assert all(x > y for x, y in zip(lrs, lrs[1:]))
    assert lrs == pytest.approx([1e-2 * lr_multiplier(t, 5, "cosine", 0, 0.2) for t in range(6)],
                                rel=1e-12)
    assert fine_tune(tiny_model(), tiny_cfg(), data["a"], 1, lr=1e-2, protocol="fixed").lrs == [1e-2]


@pytest.mark.parametrize("protocol,name", [("fixed", "nexus"), ("run", "nexus"), ("run", "adamw")])
def test_fine_tune_path_length_recomputed(protocol, name):
    model, cfg, a = tiny_model(), tiny_cfg(name), tokens(1)
    theta = [flat_params(model)] + [
        flat_params(fine_tune(model, cfg, a, n, lr=1e-2, protocol=protocol).model) for n in (1, 2)]
    two = fine_tune(model, cfg, a, 2, lr=1e-2, protocol=protocol)
    assert torch.equal(flat_params(two.model), theta[2])
    expected = sum(float(torch.linalg.vector_norm((theta[i + 1] - theta[i]).double()))
                   for i in range(2))
    assert two.path_length == pytest.approx(expected, rel=1e-12)
    assert two.path_length >= float((theta[2] - theta[0]).double().norm()) > 0


def test_closeness_distance_over_path():
    data, val = _two_sources()
    r = closeness(tiny_model(), tiny_cfg(), data, val, steps=4, lr=1e-2, points=2, protocol="fixed")
    for s in data:
        assert r["path_length"][s] >= r["distance_from_start"][s] * (1 - 1e-12)
        assert 0 < r["distance_over_path"][s] <= 1 + 1e-12
        assert r["distance_over_path"][s] == r["distance_from_start"][s] / r["path_length"][s]
    assert r["mean_distance_over_path"] == pytest.approx(np.mean(list(r["distance_over_path"].values())))
    one = closeness(tiny_model(), tiny_cfg(), data, val, steps=1, lr=1e-2, points=2, protocol="fixed")
    assert one["distance_over_path"]["a"] == pytest.approx(1.0, abs=1e-9)  # one step is straight


def test_closeness_pair_barrier_matches_independent_line():
    data = {"a": tokens(1), "b": tokens(2, period=5), "c": tokens(3, period=9)}
    val = {**{k: v[:200] for k, v in data.items()}, "o": tokens(9, 200)}
    weights = {"a": 3.0, "b": 1.0, "c": 0.0}  # c: fine-tuned, not in val/id
    cfg = tiny_cfg()
    r = closeness(tiny_model(), cfg, data, val, steps=3, lr=2e-2, points=4, protocol="fixed",
                  weights=weights)
    pb = r["pair_barrier"]
    assert pb["alphas"] == pytest.approx([0, 1 / 3, 2 / 3, 1]) and pb["id_weights"] == {"a": 3.0, "b": 1.0}
    assert list(pb["pairs"]) == ["a|b", "a|c", "b|c"]
    theta = {s: flat_params(fine_tune(tiny_model(), cfg, data[s], 3, lr=2e-2, name=s,
                                      protocol="fixed").model) for s in data}
    probe = tiny_model()

    def id_loss(vec):
        load_flat(probe, vec)
        la, lb = (source_loss(probe, val[s], SEQ, 4, 64, torch.device("cpu"), False)[0] for s in "ab")
        return (3 * la + lb) / 4

    for key, p in pb["pairs"].items():
        x, y = key.split("|")
        curve = np.array([id_loss(theta[x] + al * (theta[y] - theta[x])) for al in pb["alphas"]])
        assert p["loss"] == pytest.approx(curve, rel=1e-6)
        chord = curve[0] + np.array(pb["alphas"]) * (curve[-1] - curve[0])
        assert p["barrier"] == pytest.approx(float(np.max(curve - chord)), abs=1e-6)
        assert p["excess"] == pytest.approx(float(np.max((curve - chord)[1:-1])), abs=1e-6)
        row = r["sources"].index(x)  # the end values are the cross losses, reused
        assert p["loss"][0] == (3 * r["cross_loss"][row][0] + r["cross_loss"][row][1]) / 4
    assert pb["mean_barrier"] == pytest.approx(np.mean([p["barrier"] for p in pb["pairs"].values()]))
    eq = closeness(tiny_model(), cfg, data, val, steps=1, lr=2e-2, points=2, protocol="fixed")
    assert eq["pair_barrier"]["id_weights"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert all(p["barrier"] == 0.0 for p in eq["pair_barrier"]["pairs"].values())  # no interior
    assert eq["pair_barrier"]["mean_excess"] is None
    assert all(p["excess"] is None for p in eq["pair_barrier"]["pairs"].values())


def test_pair_barrier_known_answer():
    """val/id along theta_a = v -> theta_b = -v with known losses: source a's loss is
    -||theta||^2 (concave), b's 2 ||theta||^2, weights 3:1, so val/id = -||theta||^2 / 4 and
    the barrier (at alpha = 1/2, theta = 0) is ||v||^2 / 4."""
    from nexus_optim.diagnostics.barrier import pair_barrier

    model = tiny_model()
    v = flat_params(model)
    n = float(v.double().pow(2).sum())

    def losses_at(m, sources=None):
        sq = float(flat_params(m).double().pow(2).sum())
        return {s: {"a": -sq, "b": 2 * sq}[s] for s in sources}

    cross = {"a": {"a": -n, "b": 2 * n}, "b": {"a": -n, "b": 2 * n}}
    r = pair_barrier(model, ["a", "b"], {"a": v, "b": -v}, cross, losses_at, {"a": 3.0, "b": 1.0}, 5)
    assert r["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    expected = [-(1 - 2 * a) ** 2 * n / 4 for a in r["alphas"]]
    assert r["pairs"]["a|b"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert r["pairs"]["a|b"]["barrier"] == pytest.approx(n / 4, rel=1e-5)
    assert r["mean_barrier"] == r["pairs"]["a|b"]["barrier"]
    assert r["pairs"]["a|b"]["excess"] == pytest.approx(n / 4, rel=1e-5) == r["mean_excess"]
    # the convex mirror image (a: ||theta||^2, b: -2 ||theta||^2): the line dips below its
    # chord, so no barrier and a negative excess: the highest interior point (alpha 1/4 and
    # 3/4) sits (1 - (1/2)^2) ||v||^2 / 4 = 3 ||v||^2 / 16 below the chord
    neg_cross = {k: {s: -x for s, x in d.items()} for k, d in cross.items()}
    neg = pair_barrier(model, ["a", "b"], {"a": v, "b": -v}, neg_cross, lambda m, sources=None: {
        s: -x for s, x in losses_at(m, sources).items()}, {"a": 3.0, "b": 1.0}, 5)
    assert neg["mean_barrier"] == pytest.approx(0.0, abs=1e-6)
    assert neg["mean_excess"] == pytest.approx(-3 * n / 16, rel=1e-5)


@pytest.mark.parametrize("kwargs,word", [
    ({"protocol": "fixed"}, "lr"), ({"protocol": "fixed", "lr": -1.0}, "lr"),
    ({"protocol": "bogus"}, "protocol"), ({"protocol": "fixed", "lr": 1e-2, "min_lr_ratio": 2.0}, "min_lr_ratio"),
    ({"weights": {"a": 1.0}}, "weights"), ({"weights": {"a": 1.0, "b": -1.0}}, "weights"),
])
def test_closeness_bad_arguments_one_line(kwargs, word):
    data, val = _two_sources()
    with pytest.raises(ValueError, match=word) as e:
        closeness(tiny_model(), tiny_cfg(), data, val, steps=1, points=2, **kwargs)
    assert "\n" not in str(e.value)


def test_closeness_from_checkpoint_checks_protocol_before_loading(tmp_path):
    from nexus_optim.diagnostics.closeness import closeness_from_checkpoint

    with pytest.raises(ValueError, match="lr"):
        closeness_from_checkpoint(tmp_path / "missing", protocol="fixed")


# --------------------------------------------------------------------------- real tiny run
def _train(tiny_data, out, **train):
    from nexus_optim.train.loop import train as run_train

    cfg = from_dict({
        "data": dict(tiny_data),
        "model": {"preset": "nano", "seq_len": 32,
                  "overrides": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                "num_key_value_heads": 2, "intermediate_size": 64}},
        "optim": {"name": "nexus", "inner_steps": 2, "lr": 1e-2},
        "schedule": {"warmup_steps": 1},
        "train": {"out_dir": str(out), "steps": 4, "micro_batch_size": 4, "eval_every": 2,
                  "ckpt_every": 4, "eval_tokens": 256, "log_every": 1, "progress": False,
                  "export_hf": False, **train},
    })
    run_train(cfg)
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def grad_sim_run(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("geom_runs")
    plain = _train(tiny_data, root / "plain")
    logged = _train(tiny_data, root / "logged", grad_sim_batches=2)
    return root / "logged", plain, logged


def test_training_logs_grad_sim_without_changing_training(grad_sim_run):
    _, plain, logged = grad_sim_run
    evals = [r for r in logged if "val/id" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert {"geom/cos/prose/math", "geom/grad_sim", "geom/grad_sim_batch"} <= set(r)
        assert -1 <= r["geom/grad_sim"] <= 1
    def strip(recs):
        return [{k: v for k, v in r.items() if k != "tokens_per_s" and not k.startswith("geom/")}
                for r in recs]

    assert strip(plain) == strip(logged)


def test_cli_geometry_writes_geometry_json(grad_sim_run, capsys):
    from nexus_optim.cli import main

    run = grad_sim_run[0]
    assert main(["geometry", "grad-sim", str(run / "checkpoints" / "step_000004"),
                 "--batches", "2", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 4 and out["sources"] == ["prose", "math"]
    assert main(["geometry", "closeness", str(run), "--steps", "1", "--points", "2",
                 "--eval-tokens", "64", "--device", "cpu"]) == 0
    geo = json.loads((run / "geometry.json").read_text())
    assert set(geo) == {"grad_sim", "closeness"}
    assert geo["grad_sim"]["cos_mean_grad"][0][0] == 1.0
    c = geo["closeness"]
    assert c["eval_sources"] == ["prose", "math", "code"] and c["steps"] == 1
    assert len(c["cross_loss"]) == 2 and len(c["cross_loss"][0]) == 3
    assert c["variance"] > 0


def test_cli_geometry_closeness_fixed_protocol(grad_sim_run, tmp_path, capsys):
    from nexus_optim.cli import main

    out = tmp_path / "geo.json"
    assert main(["geometry", "closeness", str(grad_sim_run[0]), "--steps", "2", "--points", "3",
                 "--eval-tokens", "64", "--device", "cpu", "--protocol", "fixed", "--lr", "1e-3",
                 "--min-lr-ratio", "0.5", "--out", str(out)]) == 0
    c = json.loads(out.read_text())["closeness"]
    assert (c["protocol"], c["optimizer"], c["inner_steps"], c["lr"]) == ("fixed", "adamw", 1, 1e-3)
    assert c["fine_tune_lr"] == pytest.approx([1e-3, 5e-4])
    assert list(c["pair_barrier"]["pairs"]) == ["prose|math"]
    assert set(c["path_length"]) == {"prose", "math"}

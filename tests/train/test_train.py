"""The training loop end to end on tiny fixtures: learning, resume, export, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from nexus_optim.train.config import from_dict, load_config
from nexus_optim.train.logging import read_metrics
from nexus_optim.train.loop import Trainer, train


@pytest.mark.parametrize("name", ["adamw", "nexus", "fish", "random-control"])
def test_loss_decreases_for_each_optimizer(tiny_config, name):
    extra = {"optim.lr": 0.5, "optim.inner_lr": 0.5} if name == "fish" else {}
    cfg = from_dict(tiny_config(**{"optim.name": name, "train.steps": 30, "train.eval_every": 30,
                                   "train.ckpt_every": 0}, **extra))
    result = train(cfg)
    losses = [r["train/loss"] for r in read_metrics(cfg.train.out_dir) if "train/loss" in r]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, (name, first, last)
    assert result["step"] == 30 and result["tokens"] == 30 * 2 * 4 * 32
    assert {"val/prose", "val/math", "val/code", "val/id", "val/ood"} <= set(result)


def test_same_seed_same_data_order_across_optimizers(tiny_config, tmp_path):
    a = Trainer(from_dict(tiny_config(**{"optim.name": "adamw", "train.out_dir": str(tmp_path / "a")})))
    b = Trainer(from_dict(tiny_config(**{"optim.name": "nexus", "train.out_dir": str(tmp_path / "b")})))
    for _ in range(6):
        x, y = a.sampler.next(), b.sampler.next()
        assert x.source == y.source and torch.equal(x.input_ids, y.input_ids)
    # and the same initial weights
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


@pytest.mark.parametrize("name", ["nexus", "adamw"])
def test_resume_is_bitwise(tiny_config, tmp_path, name):
    full = from_dict(tiny_config(**{"optim.name": name, "train.out_dir": str(tmp_path / "full"),
                                    "train.steps": 10, "train.ckpt_every": 5}))
    train(full)
    part = from_dict(tiny_config(**{"optim.name": name, "train.out_dir": str(tmp_path / "part"),
                                    "train.steps": 10, "train.ckpt_every": 5}))
    Trainer(part).run(until=7)  # interrupted after step 7: resumes from the step-5 checkpoint
    train(part, resume=True)
    wa = load_file(str(tmp_path / "full/checkpoints/step_000010/model.safetensors"))
    wb = load_file(str(tmp_path / "part/checkpoints/step_000010/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma = [r for r in read_metrics(tmp_path / "full") if "train/loss" in r]
    mb = [r for r in read_metrics(tmp_path / "part") if "train/loss" in r]
    assert [r["train/loss"] for r in ma] == [r["train/loss"] for r in mb]


def test_run_records_config_seed_commit_versions(tiny_config):
    cfg = from_dict(tiny_config(**{"train.steps": 2, "train.eval_every": 0, "train.ckpt_every": 0}))
    train(cfg)
    import yaml
    from pathlib import Path

    out = Path(cfg.train.out_dir)
    meta = yaml.safe_load((out / "meta.yaml").read_text())
    assert meta["seed"] == 0 and "git_commit" in meta and meta["packages"]["torch"]
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["name"] == "nexus"
    ckpt = out / "checkpoints/step_000002"
    assert json.loads((ckpt / "meta.json").read_text())["step"] == 2
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_hf_export_loads_with_auto_classes(tiny_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = from_dict(tiny_config(**{"train.steps": 2, "train.export_hf": True,
                                   "train.eval_every": 0, "train.ckpt_every": 0}))
    trainer = Trainer(cfg)
    trainer.run()
    hf = trainer.out / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    ids = tok("1 + 2 = 3.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, trainer.model.eval()(ids).logits)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.name=sgd"], "optim.name: 'sgd' is not one of 'adamw', 'nexus', 'fish', 'random-control'"),
        (["optim.lrr=1"], "optim.lrr: unknown key; allowed keys: name, lr,"),
        (["train.steps=ten"], "train.steps: expected int, got 'ten'"),
        (["model.preset=7b"], "model.preset: '7b' is not one of 'nano', 'micro'"),
        (["schedule.kind=linear"], "schedule.kind: 'linear' is not one of 'cosine', 'wsd', 'constant'"),
        (["trian.steps=1"], "trian: unknown section"),
        (["optim.inner_steps=0"], "optim.inner_steps: must be > 0"),
        (["data.sources=[{name: a, kind: files, paths: [/nonexistent/x.txt]}]"],
         "data.sources[0].paths[0]: no file matches '/nonexistent/x.txt'"),
    ],
)
def test_config_errors_are_one_line_and_name_the_key(overrides, message):
    with pytest.raises(ValueError) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_yaml_scientific_notation_is_a_float(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 3e-3\n")
    assert load_config(p).optim.lr == pytest.approx(3e-3)


def test_cli_reports_config_error_in_one_line(capsys):
    from nexus_optim.cli import main

    assert main(["train", "--config", "/nonexistent.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "nexus train: error: --config: no such file '/nonexistent.yaml'"

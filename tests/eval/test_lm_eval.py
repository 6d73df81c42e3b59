"""lm-evaluation-harness round trip: export a tiny checkpoint, write our offline task data,
run lm-eval on it (CPU, offline, a few docs) and check it scores what `nexus eval` scores."""

import json
import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets / lm_eval are imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval")

SEQ = 32
LIMIT = 3


@pytest.fixture(scope="module")
def exported(tiny_data, tmp_path_factory):
    from nexus_optim.cli import main
    from nexus_optim.train.config import from_dict
    from nexus_optim.train.loop import Trainer

    root = tmp_path_factory.mktemp("lm_eval")
    cfg = from_dict({"data": dict(tiny_data),
                     "model": {"preset": "nano", "seq_len": SEQ,
                               "overrides": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                             "num_key_value_heads": 2, "intermediate_size": 64,
                                             "initializer_range": 0.2}},
                     "train": {"out_dir": str(root / "run"), "steps": 1, "progress": False, "export_hf": False}})
    Trainer(cfg).save()
    assert main(["export", str(root / "run"), str(root / "hf")]) == 0
    assert main(["eval", str(root / "run"), "--write-lm-eval-data", str(root / "tasks"),
                 "--tasks", "arith,mc", "--limit", str(LIMIT)]) == 0
    return root


def test_export_loads_with_auto_classes(exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nexus_optim.train.artifacts import load_trained

    hf_tok = AutoTokenizer.from_pretrained(exported / "hf")
    hf = AutoModelForCausalLM.from_pretrained(exported / "hf").eval()
    model, cfg, prepared, _ = load_trained(exported / "run")
    tok = prepared.tokenizer()
    text = "the cat sat"
    ids = hf_tok(text)["input_ids"]
    assert ids == [tok.eos_token_id] + tok.encode(text, add_special_tokens=False)  # EOS as BOS
    assert hf_tok.model_max_length == SEQ and hf.config.max_position_embeddings == SEQ
    x = torch.tensor([ids])
    assert torch.allclose(hf(input_ids=x).logits, model(input_ids=x).logits, atol=1e-5)


def test_lm_eval_runs_our_tasks_and_agrees_with_nexus_eval(exported):
    from lm_eval.tasks import TaskManager

    from nexus_optim.eval.lm import greedy_generate, loglikelihoods
    from nexus_optim.train.artifacts import load_trained

    tm = TaskManager(include_path=str(exported / "tasks"), include_defaults=False)
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={exported / 'hf'},dtype=float32",
                                  tasks=["nexus_arith", "nexus_mc"], limit=LIMIT, task_manager=tm,
                                  device="cpu", batch_size=4, log_samples=True)
    res = out["results"]
    assert res["nexus_arith"]["exact_match,first-number"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert 0.0 <= res["nexus_mc"]["acc,none"] <= 1.0 and "acc_norm,none" in res["nexus_mc"]

    model, cfg, prepared, _ = load_trained(exported / "run")
    tok = prepared.tokenizer()
    # multiple choice: lm-eval's per-choice log-likelihoods are ours
    docs = [json.loads(line) for line in open(exported / "tasks" / "nexus_mc.jsonl")]
    for s in out["samples"]["nexus_mc"]:
        d = docs[s["doc_id"]]
        ours = loglikelihoods(model, tok, [(d["context"], c) for c in d["choices"]])
        theirs = [r[0][0] for r in s["resps"]]
        assert theirs == pytest.approx([o.logprob for o in ours], abs=1e-3)
    # generation: lm-eval's greedy completions are ours
    arith = [json.loads(line) for line in open(exported / "tasks" / "nexus_arith.jsonl")]
    for s in out["samples"]["nexus_arith"]:
        d = arith[s["doc_id"]]
        ours = greedy_generate(model, tok, [d["prompt"]], max_new_tokens=8, stop=["\n"])[0]
        assert s["resps"][0][0] == ours
        assert s["target"] == d["answer"]
    assert any(s["resps"][0][0] for s in out["samples"]["nexus_arith"])  # not trivially empty


def test_write_lm_eval_data_without_checkpoint(tmp_path, capsys):
    import yaml

    from nexus_optim.cli import main
    from nexus_optim.eval.lm_eval_data import task_yaml
    from nexus_optim.eval.tasks import arith

    assert main(["eval", "--write-lm-eval-data", str(tmp_path), "--tasks", "arith", "--limit", "5",
                 "--seed", "2"]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "nexus_arith.jsonl")]
    assert [(r["prompt"], r["answer"]) for r in rows] == [(it.prompt, it.gold) for it in arith.build_items(5, 2)]
    written = yaml.safe_load((tmp_path / "nexus_arith.yaml").read_text())
    shipped = yaml.safe_load(task_yaml("arith").read_text())
    assert written["dataset_kwargs"]["data_files"]["test"] == str((tmp_path / "nexus_arith.jsonl").resolve())
    written["dataset_kwargs"] = shipped["dataset_kwargs"] = None
    assert written == shipped
    # mc needs a run's data: a clear error, reported per task
    assert main(["eval", "--write-lm-eval-data", str(tmp_path), "--tasks", "mc"]) == 1
    assert "needs a checkpoint" in capsys.readouterr().out

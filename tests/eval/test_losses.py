"""Validation losses and bits/byte on cases with known answers; ``nexus eval`` end to end."""

import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nexus_optim.data.config import DataConfig
from nexus_optim.data.prepare import prepare_data
from nexus_optim.eval.losses import (evaluate_losses, source_metrics, span_bytes,
                                     token_byte_lengths)

SEQ = 32


class ZeroLM(torch.nn.Module):
    """Logits all zero: the uniform distribution over ``vocab`` tokens."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


@pytest.fixture(scope="module")
def prepared(tiny_data):
    return prepare_data(DataConfig.from_dict(tiny_data), progress=False)


def test_uniform_model_loss_is_log_vocab_and_bpb_matches_decoded_bytes(prepared):
    tok = prepared.tokenizer()
    V = len(tok)
    max_tokens = 10 * SEQ + 5  # a partial trailing window is dropped
    res = evaluate_losses(ZeroLM(V), prepared, SEQ, batch_size=3, max_tokens=max_tokens,
                          tokenizer=tok, progress=False)
    assert res["bytes_exact"] is True
    assert set(res["sources"]) == {"prose", "math", "code"}
    for name, m in res["sources"].items():
        arr = np.asarray(prepared.load(name, "val"), dtype=np.int64)
        n_win = min(len(arr), max_tokens) // SEQ
        windows = arr[:n_win * SEQ].reshape(n_win, SEQ)
        # independent byte count: decode exactly the predicted tokens of every window
        nbytes = sum(len(tok.decode(w[1:].tolist(), skip_special_tokens=True).encode("utf-8"))
                     for w in windows)
        assert m["tokens"] == n_win * (SEQ - 1)
        assert m["bytes"] == nbytes
        assert m["loss"] == pytest.approx(math.log(V), abs=1e-6)
        assert m["bits_per_byte"] == pytest.approx(math.log(V) * m["tokens"] / (math.log(2) * nbytes), rel=1e-6)
    # pooled: in-distribution = mixture-weighted mean of train sources, OOD = the code source
    w = prepared.weights
    exp_bpb = (w["prose"] * res["sources"]["prose"]["bits_per_byte"]
               + w["math"] * res["sources"]["math"]["bits_per_byte"]) / (w["prose"] + w["math"])
    assert res["id"]["loss"] == pytest.approx(math.log(V), abs=1e-6)
    assert res["id"]["bits_per_byte"] == pytest.approx(exp_bpb, rel=1e-9)
    assert res["ood"]["bits_per_byte"] == pytest.approx(res["sources"]["code"]["bits_per_byte"])
    assert res["summary"]["val/id"] == res["id"]["loss"] and "bpb/code" in res["summary"]


def test_weighted_pooling_uses_mixture_weights(prepared):
    tok = prepared.tokenizer()
    res = evaluate_losses(ZeroLM(len(tok)), prepared, SEQ, max_tokens=4 * SEQ, tokenizer=tok,
                          progress=False)
    skewed = dataclasses.replace(prepared, weights={**prepared.weights, "prose": 3.0, "math": 1.0})
    res2 = evaluate_losses(ZeroLM(len(tok)), skewed, SEQ, max_tokens=4 * SEQ, tokenizer=tok,
                           progress=False)
    b = {s: res["sources"][s]["bits_per_byte"] for s in res["sources"]}
    assert res2["id"]["bits_per_byte"] == pytest.approx((3 * b["prose"] + b["math"]) / 4, rel=1e-9)


def test_byte_lengths_are_exact_and_additive(prepared, tmp_path):
    tok = prepared.tokenizer()
    table = token_byte_lengths(tok)
    assert table[tok.eos_token_id] == 0
    for name in prepared.shards:  # the whole val split: its UTF-8 bytes as prepare_data counted them
        arr = np.asarray(prepared.load(name, "val"), dtype=np.int64)
        assert int(table[arr].sum()) == prepared.val_bytes[name]
    # multi-byte characters cut between tokens: spans still add up exactly
    from nexus_optim.data.tokenizer import load_tokenizer, train_bpe

    text = "naïve café — 日本語のテキスト ✓ 12 émigré Ωmega\n" * 3
    path = train_bpe([text, "plain ascii words here"], 300, tmp_path / "tok.json")
    t2 = load_tokenizer(path)
    ids = np.asarray(t2.encode(text, add_special_tokens=False), dtype=np.int64)
    tab2 = token_byte_lengths(t2)
    assert int(tab2[ids].sum()) == len(text.encode("utf-8"))
    for k in range(0, len(ids), 3):
        assert int(tab2[ids[:k]].sum() + tab2[ids[k:]].sum()) == len(text.encode("utf-8"))
    assert span_bytes(torch.tensor(ids[None]), t2, tab2) == len(text.encode("utf-8"))


def test_losses_independent_of_batch_size_and_deterministic(prepared):
    from nexus_optim.models.presets import build_model

    tok = prepared.tokenizer()
    model = build_model("nano", len(tok), SEQ, seed=0, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, intermediate_size=64)
    arr = prepared.load("prose", "val")
    a = source_metrics(model, arr, SEQ, 1, 6 * SEQ, torch.device("cpu"), tokenizer=tok)
    b = source_metrics(model, arr, SEQ, 4, 6 * SEQ, torch.device("cpu"), tokenizer=tok)
    c = source_metrics(model, arr, SEQ, 4, 6 * SEQ, torch.device("cpu"), tokenizer=tok)
    assert a["tokens"] == b["tokens"] == 6 * (SEQ - 1) and a["bytes"] == b["bytes"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert b == c
    # a real model is better than uniform on nothing yet, but finite and near ln V
    assert abs(a["loss"] - math.log(len(tok))) < 1.0


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    """A step-0 checkpoint of a tiny model (no training needed for the machinery)."""
    from nexus_optim.train.config import from_dict
    from nexus_optim.train.loop import Trainer

    out = tmp_path_factory.mktemp("eval_run") / "run"
    cfg = from_dict({"data": dict(tiny_data),
                     "model": {"preset": "nano", "seq_len": SEQ,
                               "overrides": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                             "num_key_value_heads": 2, "intermediate_size": 64}},
                     "train": {"out_dir": str(out), "steps": 1, "progress": False, "export_hf": False,
                               "eval_batch_size": 4}})
    ckpt = Trainer(cfg).save()
    return out, ckpt


def test_cli_eval_on_run_and_checkpoint_dirs(checkpoint, tmp_path, capsys):
    from nexus_optim.cli import main

    run_dir, ckpt = checkpoint
    out = tmp_path / "res.json"
    assert main(["eval", str(run_dir), "--out", str(out), "--max-tokens", str(3 * SEQ),
                 "--batch-size", "2", "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["checkpoint"] == str(ckpt.resolve()) and res["step"] == 0
    L = res["losses"]
    assert set(L["sources"]) == {"prose", "math", "code"}
    assert L["sources"]["code"]["role"] == "ood" and "id" in L and "ood" in L
    for m in L["sources"].values():
        assert m["tokens"] == 3 * (SEQ - 1) and m["bytes"] > 0 and math.isfinite(m["bits_per_byte"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["losses"]["val/id"] == pytest.approx(L["id"]["loss"])
    # the checkpoint directory itself gives the same numbers
    out2 = tmp_path / "res2.json"
    assert main(["eval", str(ckpt), "--out", str(out2), "--max-tokens", str(3 * SEQ),
                 "--batch-size", "2", "--no-progress"]) == 0
    assert json.loads(out2.read_text())["losses"]["summary"] == L["summary"]


def test_cli_eval_errors_are_one_line(tmp_path, capsys):
    from nexus_optim.cli import main

    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "neither a checkpoint nor a run directory" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--tasks", "nope", "--no-losses"]) == 2

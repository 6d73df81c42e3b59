"""Downstream-task machinery on known answers: extractors, generators, greedy decoding,
log-likelihood ranking and the sandboxed code checker."""

import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nexus_optim.eval.lm import cut_at_stop, greedy_generate, loglikelihoods
from nexus_optim.eval.tasks import TaskContext, arith, code, gsm, mc, parse_tasks
from nexus_optim.eval.tasks.base import GenItem, exact_match
from nexus_optim.eval.tasks.extract import (extract_arith_answer, extract_gsm_answer,
                                            normalize_number, numbers_match)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from nexus_optim.data.tokenizer import load_tokenizer, train_bpe

    text = ["Question: What is 12 + 30?\nAnswer: 42\n\n", "the cat sat on the mat. " * 20,
            "def add(a, b):\n    return a + b\n" * 5, "#### 1,234.5 $ - xyz\n"]
    path = train_bpe(text, 300, tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return load_tokenizer(path)


class BigramLM(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next-token distribution depends only on the
    current token, so every log-probability is known in closed form."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.float(), requires_grad=False)

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])


def chain_model(tok, after: int, text: str, end_with_eos: bool = True) -> BigramLM:
    """A bigram LM that, after token ``after``, greedily emits ``text`` (then EOS)."""
    ids = tok.encode(text, add_special_tokens=False)
    assert len(set(ids)) == len(ids) and after not in ids
    V = len(tok)
    table = torch.zeros(V, V)
    seq = [after] + ids + ([tok.eos_token_id] if end_with_eos else [])
    for a, b in zip(seq, seq[1:]):
        table[a, b] = 10.0
    return BigramLM(table)


# ----------------------------------------------------------------------------- extractors
GOLD_SOLUTIONS = [  # hand-written GSM8K-style worked solutions and their answers
    ("She buys 3 packs of 12 pens, so 3*12 = 36 pens.\n#### 36", "36"),
    ("The price is $1,250 plus $250 = $1,500.\n#### 1,500", "1500"),
    ("Half of 7 is 3.5 hours.\n#### 3.5", "3.5"),
    ("He ends 8 - 10 = -2 dollars short.\n#### -2", "-2"),
    ("Total: 4 + 4 = 8 apples. The answer is 8.", "8"),
    ("First 2 boxes, then 5 more boxes, so 7 boxes in all", "7"),
    ("#### $40.", "40"),
    ("It takes 12.50 dollars\n#### 12.50", "12.5"),
]


def test_gsm_extractor_gets_every_gold_solution():
    preds = [extract_gsm_answer(s) for s, _ in GOLD_SOLUTIONS]
    assert preds == [a for _, a in GOLD_SOLUTIONS]
    items = [GenItem("p", a) for _, a in GOLD_SOLUTIONS]
    res = exact_match(items, [s for s, _ in GOLD_SOLUTIONS], extract_gsm_answer)
    assert res["accuracy"] == 1.0 and res["correct"] == len(GOLD_SOLUTIONS)


def test_number_normalisation_and_matching():
    assert normalize_number("1,200.50") == "1200.5"
    assert normalize_number("$12.0") == "12" and normalize_number("-0") == "0"
    assert normalize_number("abc") is None
    assert numbers_match("12.0", "12") and not numbers_match(None, "12") and not numbers_match("13", "12")
    assert extract_gsm_answer("no digits here") is None
    assert extract_arith_answer(" 85.\nQuestion: What is 3 + 4?") == "85"
    assert extract_arith_answer(" -7") == "-7"


def test_gsm_extractor_on_held_out_template_solutions(gsm_data_dir):
    from nexus_optim.data.gsm import final_answer, format_problem, problems_for

    rows = problems_for(gsm_data_dir, "en", "eval", 2, seed=0)
    assert rows
    docs = [format_problem(q, s) for _, q, s in rows]
    preds = [extract_gsm_answer(d.split("\nAnswer:", 1)[1]) for d in docs]
    assert preds == [normalize_number(final_answer(s)) for _, _, s in rows]
    problems = gsm.load_problems(5, 0, gsm_data_dir)
    ctx = TaskContext(model=None, tokenizer=None, data_dir=gsm_data_dir)
    res = gsm.run(ctx, problems=problems, generate=lambda p, n, s: [f" so #### {a}" for _, a in problems])
    assert res["accuracy"] == 1.0 and res["n"] == 5


# ------------------------------------------------------------------------- arithmetic
def test_arith_generator_is_correct_deterministic_and_held_out():
    probs = arith.arith_problems(300, seed=3)
    assert probs == arith.arith_problems(300, seed=3) and probs != arith.arith_problems(300, seed=4)
    assert len({q for q, _ in probs}) == 300
    for q, a in probs:
        expr = q.removeprefix("What is ").removesuffix("?")
        assert int(a) == eval(expr) and int(a) >= 0  # noqa: S307 - our own generated expressions
    items = arith.build_items(50, seed=3, fewshot=3)
    shots = items[0].prompt.split("\n\n")[:3]
    assert len(shots) == 3 and all(s.startswith("Question: What is ") for s in shots)
    assert not {s.split("\n")[0][len("Question: "):] for s in shots} & {it.question for it in items}
    assert items[0].prompt.endswith(f"Question: {items[0].question}\nAnswer:")


def test_fixed_output_scores_exactly_as_counted_by_hand():
    items = arith.build_items(40, seed=1, fewshot=0)
    expected = sum(it.gold == "42" for it in items) / 40
    ctx = TaskContext(model=None, tokenizer=None, seed=1, options={"arith": {"fewshot": 0}})
    res = arith.run(ctx, limit=40, generate=lambda prompts, n, stop: [" 42\nQuestion: 1"] * len(prompts))
    assert res["accuracy"] == expected and res["n"] == 40 and res["no_answer"] == 0
    oracle = arith.run(ctx, limit=40, generate=lambda prompts, n, stop: [f" {it.gold}" for it in items])
    assert oracle["accuracy"] == 1.0
    # a handcrafted case: 2 of 5 golds are 7
    hand = [GenItem("p", g) for g in ["7", "8", "7.0", "-7", "70"]]
    assert exact_match(hand, [" 7"] * 5, extract_arith_answer)["correct"] == 2


# ------------------------------------------------------------------------- generation
def test_greedy_generate_emits_the_chain_and_cuts_at_stop_and_eos(tok):
    prompt = "Answer:"
    last = tok.encode(prompt, add_special_tokens=False)[-1]
    model = chain_model(tok, last, " 42\nxyz")
    assert greedy_generate(model, tok, [prompt], max_new_tokens=20) == [" 42\nxyz"]  # stops at EOS
    assert greedy_generate(model, tok, [prompt, "the cat sat on the mat. Answer:"], max_new_tokens=20,
                           stop=["\n"]) == [" 42", " 42"]
    n = len(tok.encode(" 42", add_special_tokens=False))
    assert greedy_generate(model, tok, [prompt], max_new_tokens=n) == [" 42"]  # budget
    assert cut_at_stop("a\n\nb Question: c", ["Question:", "\n\n"]) == "a"


def test_hf_generate_left_padding_matches_unbatched_and_the_plain_loop(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.3, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    prompts = ["the cat", "Question: What is 12 + 30?\nAnswer:", "def add(a, b):\n    return"]
    batched = greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    single = [greedy_generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    loop = greedy_generate(model, tok, prompts, max_new_tokens=6, batch_size=3, use_hf_generate=False)
    assert batched == single == loop
    assert any(batched)


# ------------------------------------------------------------------ log-likelihood / MC
def test_loglikelihoods_equal_the_closed_form_of_a_bigram_model(tok):
    V = len(tok)
    g = torch.Generator().manual_seed(0)
    table = torch.randn(V, V, generator=g) * 3
    model = BigramLM(table)
    logp = torch.log_softmax(table, -1)
    reqs = [("the cat", " sat on"), ("Answer:", " 42"), ("x", " the mat.")]
    got = loglikelihoods(model, tok, reqs, batch_size=2)
    for (ctx, cont), ll in zip(reqs, got):
        ids = [tok.eos_token_id] + tok.encode(ctx, add_special_tokens=False)
        c = tok.encode(cont, add_special_tokens=False)
        seq = ids + c
        exp = sum(float(logp[seq[i - 1], seq[i]]) for i in range(len(ids), len(seq)))
        greedy = all(int(logp[seq[i - 1]].argmax()) == seq[i] for i in range(len(ids), len(seq)))
        assert ll.logprob == pytest.approx(exp, abs=1e-4) and ll.n_tokens == len(c) and ll.is_greedy == greedy
    # left truncation to max_length keeps the continuation and the nearest context
    short = loglikelihoods(model, tok, reqs, max_length=len(tok.encode(" the mat.", add_special_tokens=False)) + 1)
    assert short[2].logprob == pytest.approx(got[2].logprob, abs=1e-4)  # bigram: only the last context token matters


def test_mc_ranking_raw_vs_length_normalised():
    items = [mc.MCItem("s", "ctx", [" a", " bbbbbbbb"], 1), mc.MCItem("s", "ctx", [" a", " bbbbbbbb"], 0),
             mc.MCItem("t", "ctx", [" x", " y", " z"], 2)]
    # item 1: raw picks 0 (-3 > -4); per byte picks 1 (-4/9 > -3/2); item 3: both pick 2
    res = mc.score_mc(items, [[-3.0, -4.0], [-3.0, -4.0], [-5.0, -6.0, -1.0]])
    assert res["n"] == 3
    assert res["acc"] == pytest.approx(2 / 3) and res["acc_norm"] == pytest.approx(2 / 3)
    assert res["sources"]["s"] == {"n": 2, "acc": 0.5, "acc_norm": 0.5}
    assert res["sources"]["t"] == {"n": 1, "acc": 1.0, "acc_norm": 1.0}


def test_mc_end_to_end_with_a_model_that_knows_the_answer(tok):
    """A bigram model that strongly prefers the gold continuation's tokens wins every item."""
    docs = ["the cat sat on the mat and the dog ran far away from the home while all was well " * 3,
            "def add(a, b): return a + b and then we print the sum of all numbers in the list " * 3,
            "question what is twelve plus thirty answer forty two is the number we want here " * 3,
            "one two three four five six seven eight nine ten eleven twelve thirteen fourteen " * 3]
    items = mc.build_mc_items(docs, "src", n=6, n_choices=3, context_chars=40, continuation_chars=16, seed=0)
    assert len(items) == 6
    for it in items:
        assert len(it.choices) == 3 and len({c.strip() for c in it.choices}) == 3
        gold = it.choices[it.label]
        assert gold.startswith(" ") and any(it.context + gold in d for d in docs)
        assert all(not (it.context + c in "".join(docs)) for j, c in enumerate(it.choices) if j != it.label)
    assert {it.label for it in items} != {0}  # gold position is randomised
    assert mc.build_mc_items(docs, "src", 6, 3, 40, 16, seed=0) == items  # deterministic
    V = len(tok)
    ctx = TaskContext(model=None, tokenizer=tok, batch_size=4)
    for it in items:  # a model that puts all its mass on this item's gold token chain
        seq = [tok.eos_token_id] + tok.encode(it.context, add_special_tokens=False) \
            + tok.encode(it.choices[it.label], add_special_tokens=False)
        table = torch.zeros(V, V)
        for a, b in zip(seq, seq[1:]):
            table[a, b] += 10.0
        ctx.model = BigramLM(table)
        res = mc.run(ctx, items=[it])
        assert res["acc"] == 1.0 and res["n"] == 1 and res["chance"] == pytest.approx(1 / 3)


def test_mc_items_from_a_single_document_source():
    docs = [" ".join(f"w{i}" for i in range(400))]
    items = mc.build_mc_items(docs, "one", n=5, n_choices=4, context_chars=30, continuation_chars=12, seed=1)
    assert len(items) == 5
    for it in items:
        start = docs[0].index(it.context)
        span = (start, start + len(it.context) + len(it.choices[it.label]))
        for j, c in enumerate(it.choices):
            if j != it.label:  # distractors come from elsewhere in the document
                k = docs[0].index(c)
                assert k >= span[1] or k + len(c) <= span[0]


def test_mc_docs_from_tokens_splits_at_eos(tok):
    a, b = "first doc here", "second one"
    ids = tok.encode(a, add_special_tokens=False) + [tok.eos_token_id] + tok.encode(b, add_special_tokens=False) \
        + [tok.eos_token_id]
    assert mc.docs_from_tokens(np.array(ids), tok.eos_token_id, tok) == [a, b]


# ------------------------------------------------------------------------------- code
def test_code_checker_correct_wrong_and_infinite_loop():
    add = next(p for p in code.PROBLEMS if p.name == "add")
    ok, wrong, loop = code.check_completions([add] * 3, [" a + b\n", " a - b\n",
                                                         " next(x for x in iter(int, 1) if x)\n"],
                                             timeout=2.0)
    assert ok.passed and ok.status == "passed"
    assert not wrong.passed and wrong.status == "failed" and "AssertionError" in wrong.stderr
    t0 = time.time()
    r = code.check_program("import time\nwhile True:\n    time.sleep(0.01)\n", timeout=1.0)
    assert r.status == "timeout" and not r.passed and time.time() - t0 < 8
    assert loop.status == "timeout"


def test_code_reference_solutions_all_pass_and_sandbox_is_isolated(tmp_path):
    ctx = TaskContext(model=None, tokenizer=None)
    res = code.run(ctx, generate=lambda prompts, n, stop: [p.solution for p in code.PROBLEMS])
    assert res["n"] == len(code.PROBLEMS) >= 20 and res["pass@1"] == 1.0
    # a program runs in its own temp dir, with -I (no cwd / user site on sys.path)
    r = code.check_program("import os, sys\nassert os.getcwd() != %r\nassert sys.flags.isolated == 1\n"
                           "open('x.txt', 'w').write('hi')\n" % os.getcwd(), timeout=5.0)
    assert r.passed, r.stderr
    assert not Path("x.txt").exists()


def test_code_body_truncation():
    add = next(p for p in code.PROBLEMS if p.name == "add")
    comp = " a + b\n\n\ndef other():\n    return 1\nprint(other())"
    assert code.truncate_body(comp) == " a + b\n\n"
    assert code.check_completions([add], [comp])[0].passed
    total = next(p for p in code.PROBLEMS if p.name == "total")
    assert code.truncate_body("        s += n\n    return s\nx = 1\n", at_line_start=True) == \
        "        s += n\n    return s"
    assert code.check_completions([total], ["        s += n\n    return s\nassert False\n"])[0].passed


def test_task_names():
    assert parse_tasks("gsm, arith") == ["gsm", "arith"] and parse_tasks("all") == list(code_tasks())
    with pytest.raises(ValueError, match="unknown task"):
        parse_tasks("gsm,nope")


def code_tasks():
    from nexus_optim.eval.tasks import TASKS

    return TASKS


def test_cli_tasks_on_a_tiny_checkpoint(tiny_data, tmp_path):
    """``nexus eval CKPT --tasks arith,mc,code --limit N`` runs end to end (scores ~0: untrained)."""
    import json

    from nexus_optim.cli import main
    from nexus_optim.train.config import from_dict
    from nexus_optim.train.loop import Trainer

    cfg = from_dict({"data": dict(tiny_data),
                     "model": {"preset": "nano", "seq_len": 32,
                               "overrides": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                             "num_key_value_heads": 2, "intermediate_size": 64}},
                     "train": {"out_dir": str(tmp_path / "run"), "steps": 1, "progress": False,
                               "export_hf": False}})
    Trainer(cfg).save()
    out = tmp_path / "res.json"
    rc = main(["eval", str(tmp_path / "run"), "--tasks", "arith,mc,code", "--limit", "3", "--no-losses",
               "--no-progress", "--out", str(out), "--log-samples",
               "--task-option", "arith.max_new_tokens=4", "--task-option", "code.max_new_tokens=8"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert "losses" not in res
    t = res["tasks"]
    assert t["arith"]["n"] == 3 and 0 <= t["arith"]["accuracy"] <= 1 and len(t["arith"]["samples"]) == 3
    assert t["mc"]["n"] == 9 and set(t["mc"]["sources"]) == {"prose", "math", "code"}
    assert t["code"]["n"] == 3 and 0 <= t["code"]["pass@1"] <= 1
    assert all(math.isfinite(s) for lp in t["mc"]["samples"] for s in lp["logprobs"])

"""YAML is read with limits everywhere, and every size in a config is bounded before anything
is allocated or written (issue 21: alias bomb, duplicate sections, vocab / batch / seed / eps /
threads / weight decay)."""

from __future__ import annotations

import time

import pytest

from nexus_optim.cli import _task_options, main
from nexus_optim.train.artifacts import checkpoint_config
from nexus_optim.train.checkpoint import CheckpointError
from nexus_optim.train.config import load_config
from nexus_optim.train.resume_checks import check_resume
from nexus_optim.train.yaml_limits import YAML_MAX_BYTES, YAML_MAX_DEPTH, YAML_MAX_NODES, parse_yaml

# 9 lists of 9 aliases of the one before: 9^9 (387 million) strings once expanded, 0.4 KB here
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))


def _one_line_error(fn, *args, exc=ValueError, fast=False) -> str:
    t0 = time.monotonic()
    with pytest.raises(exc) as e:
        fn(*args)
    if fast:  # generous for a busy machine; the bomb itself would take minutes and GBs
        assert time.monotonic() - t0 < 2.0, "the limit must act before the document is expanded"
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_alias_bomb_is_refused_fast_everywhere_yaml_is_read(tmp_path):
    assert len(BOMB) < 1024
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(BOMB)
    expected = "expands to more than 100000 nodes"
    msg = _one_line_error(load_config, cfg_file, fast=True)
    assert msg.startswith(f"{cfg_file}:") and expected in msg
    # a checkpoint's config.yaml: eval / export and --resume
    assert expected in _one_line_error(checkpoint_config, tmp_path, exc=CheckpointError, fast=True)
    assert expected in _one_line_error(check_resume, tmp_path, load_config(), exc=CheckpointError, fast=True)
    # a run's config.yaml read by nexus compare
    from nexus_optim.report.runs import load_run

    (tmp_path / "metrics.jsonl").write_text("")
    assert expected in _one_line_error(load_run, tmp_path, fast=True)
    # --set and --task-option values
    flow = "{" + BOMB.replace("\n", ", ").rstrip(", ") + "}"
    assert expected in _one_line_error(load_config, None, [f"model.overrides={flow}"], fast=True)
    assert expected in _one_line_error(_task_options, [f"code.timeout={flow}"], fast=True)


def test_cli_prints_one_line_for_an_alias_bomb(tmp_path, capsys):
    cfg_file = tmp_path / "bomb.yaml"
    cfg_file.write_text(BOMB)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--set", f"train.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nexus train: error: {cfg_file}:") and "\n" not in err
    assert not out.exists()


def test_duplicate_keys_are_refused_naming_file_and_key(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("optim:\n  lr: 1.0e-3\ntrain:\n  steps: 3\noptim:\n  name: adamw\n")
    msg = _one_line_error(load_config, p)
    assert msg == f"{p}:5:1: invalid YAML: duplicate key 'optim' (the second would replace the first)"
    p.write_text("optim:\n  lr: 1.0e-3\n  lr: 2.0e-3\n")
    assert "duplicate key 'lr'" in _one_line_error(load_config, p)
    assert "duplicate key 'a'" in _one_line_error(load_config, None, ["model.overrides={a: 1, a: 2}"])
    # a merge key followed by one of the merged keys is an override, not a duplicate
    assert parse_yaml("b: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n", "f") == {
        "b": {"x": 1, "y": 2}, "d": {"x": 3, "y": 2}}


def test_depth_recursion_and_size_limits(tmp_path):
    deep = "[" * (YAML_MAX_DEPTH + 1) + "]" * (YAML_MAX_DEPTH + 1)
    assert f"nested deeper than {YAML_MAX_DEPTH} levels" in _one_line_error(parse_yaml, deep, "f")
    ok = "[" * (YAML_MAX_DEPTH - 1) + "]" * (YAML_MAX_DEPTH - 1)
    assert parse_yaml(ok, "f") is not None
    very_deep = "[" * 100_000  # a RecursionError in PyYAML's composer; libyaml stops at 1000
    assert "invalid YAML" in _one_line_error(parse_yaml, very_deep, "f")
    assert "recursive alias" in _one_line_error(parse_yaml, "a: &x [1, *x]\n", "f")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * YAML_MAX_BYTES + "\n")
    msg = _one_line_error(load_config, big)
    assert str(big) in msg and f"larger than {YAML_MAX_BYTES} bytes" in msg
    # a wide (not aliased) document over the node limit
    wide = "[" + ",".join(["1"] * (YAML_MAX_NODES + 1)) + "]"
    assert "expands to more than" in _one_line_error(parse_yaml, wide, "f")
    # aliases within the limits are fine (a shared source definition)
    assert parse_yaml("x: &a {w: 1}\ny: [*a, *a]\n", "f") == {"x": {"w": 1}, "y": [{"w": 1}, {"w": 1}]}


def test_a_config_that_is_not_a_regular_file_is_never_opened(tmp_path):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block until a writer came
    for p in (tmp_path, fifo, "/dev/zero"):
        assert _one_line_error(load_config, p, fast=True) == f"--config: {str(p)!r} is not a regular file"
    assert _one_line_error(load_config, tmp_path / "nope.yaml") == f"--config: no such file {str(tmp_path / 'nope.yaml')!r}"


def test_python_tags_are_not_constructed():
    msg = _one_line_error(parse_yaml, "a: !!python/object/apply:os.system ['touch x']", "f")
    assert "could not determine a constructor" in msg


@pytest.mark.parametrize("override, message", [
    ("data.vocab_size=2147483648", "data.vocab_size: 2147483648 must be an integer in [260, 1048576]"),
    ("data.vocab_size=259", "data.vocab_size: 259 must be an integer in [260, 1048576]"),
    ("train.micro_batch_size=100000000", "train.micro_batch_size: must be in [1, 65536], got 100000000"),
    ("train.eval_batch_size=100000", "train.eval_batch_size: must be in [1, 65536], got 100000"),
    ("model.seq_len=10000000", "model.seq_len: must be in [1, 1048576], got 10000000"),
    ("train.threads=-1", "train.threads: must be in [0, 1024] (0 or null: torch's default), got -1"),
    ("optim.eps=0", "optim.eps: must be > 0 (it keeps Adam's division finite), got 0"),
    ("optim.eps=-1.0e-8", "optim.eps: must be > 0"),
    ("train.seed=-1", "train.seed: must be in [0, 4294967295], got -1"),
    ("train.seed=4294967296", "train.seed: must be in [0, 4294967295], got 4294967296"),
    ("model.init_seed=-1", "model.init_seed: must be in [0, 4294967295], got -1"),
    ("data.seed=-1", "data.seed: -1 must be an integer in [0, 4294967295]"),
    ("optim.weight_decay=1e9", "optim.weight_decay: 1000000000.0 with optim.lr 0.003: decoupled decay "
                               "multiplies every weight by 1 - lr*weight_decay = -3e+06 per step"),
    ("optim.weight_decay=334", "lr*weight_decay must be < 1"),
    ("train.out_dir=''", "train.out_dir: expected a non-empty path, got ''"),
])
def test_sizes_and_ranges_are_bounded(override, message):
    assert message in _one_line_error(load_config, None, [override])


def test_memory_bounds_use_the_whole_shape():
    # each factor is within its own bound; the logits of one micro-batch are not
    msg = _one_line_error(load_config, None, ["train.micro_batch_size=4096", "model.seq_len=65536"])
    assert msg.startswith("train.micro_batch_size: 4096 x model.seq_len 65536 x data.vocab_size 4096 fp32 "
                          "logits are 4,096 GiB in one tensor, more than any single device holds")
    msg = _one_line_error(load_config, None, ["model.overrides={hidden_size: 1000000}"])
    assert msg.startswith("model: preset 'nano' with model.overrides has about ") and "parameters" in msg
    # the largest preset, and values at the bounds, pass
    load_config(None, ["model.preset=3b", "train.micro_batch_size=8", "model.seq_len=4096"])
    load_config(None, ["train.threads=0", "train.seed=4294967295", "data.vocab_size=1048576",
                       "optim.weight_decay=333"])  # lr 3e-3 * 333 < 1
    load_config(None, ["optim.name=fish", "optim.lr=1", "optim.weight_decay=5"])  # fish: no decay


def test_estimated_parameters_match_the_built_model():
    from nexus_optim.models.presets import build_model
    from nexus_optim.train.config import estimated_parameters

    for preset, overrides in (("nano", {}), ("micro", {"num_key_value_heads": 2}),
                              ("nano", {"tie_word_embeddings": False, "head_dim": 16})):
        cfg = load_config(None, [f"model.preset={preset}", f"model.overrides={overrides}"])
        model = build_model(preset, vocab_size=512, max_seq_len=64, **overrides)
        n = sum(p.numel() for p in model.parameters())
        est = estimated_parameters(cfg, 512)
        assert abs(est - n) / n < 0.01, (preset, overrides, est, n)  # norms are left out


def test_bad_seed_is_refused_before_any_run_file_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    for bad in ("train.seed=-1", "optim.eps=0", "train.threads=-1", "train.micro_batch_size=100000000"):
        assert main(["train", "--set", f"train.out_dir={out}", "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"nexus train: error: {bad.split('=')[0]}: ") and "\n" not in err
        assert not out.exists()


def test_trainer_checks_a_config_changed_in_python(tmp_path):
    from nexus_optim.train.loop import Trainer

    cfg = load_config(None, [f"train.out_dir={tmp_path / 'run'}"])
    cfg.train.seed = -1  # bypasses load_config
    with pytest.raises(ValueError, match=r"^train.seed: must be in \[0, 4294967295\], got -1$"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()

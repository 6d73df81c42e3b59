"""Config errors are one line naming the key or file (issue 13, items 12, 13, 14, 15)."""

from __future__ import annotations

import pytest

from nexus_optim.cli import main
from nexus_optim.models.presets import check_overrides, llama_config
from nexus_optim.train.config import load_config


def _err(overrides, path=None) -> str:
    with pytest.raises(ValueError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("override, message", [
    # item 12: model.overrides are LlamaConfig fields with the right types; vocab_size is fixed
    ("model.overrides={vocab_size: 100}", "model.overrides.vocab_size: cannot be overridden: it comes from the tokenizer"),
    ("model.overrides={hidden_sise: 64}", "model.overrides.hidden_sise: not a LlamaConfig field; allowed: "),
    ("model.overrides={hidden_size: big}", "model.overrides.hidden_size: expected int, got 'big'"),
    ("model.overrides={tie_word_embeddings: 1}", "model.overrides.tie_word_embeddings: expected bool, got 1"),
    ("model.overrides={rms_norm_eps: [1]}", "model.overrides.rms_norm_eps: expected float, got [1]"),
    ("model.overrides={num_hidden_layers: 0}", "model.overrides.num_hidden_layers: must be > 0, got 0"),
    ("model.overrides={hidden_act: gleu}", "model.overrides.hidden_act: 'gleu' is not one of 'gelu',"),
    ("model.overrides={hidden_size: 100, num_attention_heads: 3}",
     "model.overrides: The hidden size (100) is not a multiple of the number of attention heads (3)."),
    ("model.overrides=[1, 2]", "model.overrides: expected dict, got [1, 2]"),
    # item 13: inf / nan anywhere numeric
    ("optim.inner_lr=.inf", "optim.inner_lr: must be a finite number, got inf"),
    ("optim.max_grad_norm=.nan", "optim.max_grad_norm: must be a finite number, got nan"),
    ("optim.lr=-.inf", "optim.lr: must be a finite number, got -inf"),
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),  # a string YAML does not read as a float
    ("optim.betas=[0.9, .nan]", "optim.betas[1]: must be a finite number, got nan"),
    ("schedule.min_lr_ratio=.nan", "schedule.min_lr_ratio: must be a finite number, got nan"),
    ("data.val_fraction=.nan", "data.val_fraction: must be a finite number, got nan"),
    ("model.overrides={rms_norm_eps: .inf}", "model.overrides.rms_norm_eps: must be a finite number, got inf"),
    ("optim.betas=[a, 0.9]", "optim.betas: expected two numbers in [0, 1), got ['a', 0.9]"),
    # item 14: a --set value that is not YAML
    ("optim.lr=[1", "--set optim.lr: value '[1' is not valid YAML"),
])
def test_bad_values_are_one_line_naming_the_key(override, message):
    assert message in _err([override])


def test_overrides_accept_llama_fields_and_yaml_floats():
    cfg = load_config(None, ["model.overrides={hidden_size: 64, num_attention_heads: 4, rope_theta: 1e5, "
                             "rms_norm_eps: 1e-6, tie_word_embeddings: false}"])
    assert cfg.model.overrides["rope_theta"] == 1e5
    assert llama_config("nano", 300, 32, **cfg.model.overrides).hidden_size == 64
    with pytest.raises(ValueError, match="model.overrides.foo: not a LlamaConfig field"):
        llama_config("nano", 300, 32, foo=1)  # the library entry point checks too
    with pytest.raises(ValueError, match="model.overrides.vocab_size: cannot be overridden"):
        check_overrides({"vocab_size": 10})
    check_overrides({}, "nano", 128)


def test_seq_len_above_max_position_embeddings_is_refused():
    msg = _err(["model.seq_len=256", "model.overrides={max_position_embeddings: 128}"])
    assert msg == "model.seq_len: 256 is above model.overrides.max_position_embeddings=128"
    assert load_config(None, ["model.seq_len=128", "model.overrides={max_position_embeddings: 128}"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lr: 1e-3\n  betas: [0.9, 0.95\ntrain:\n  steps: 3\n")
    msg = _err([], p)
    assert msg.startswith(f"{p}:4:") and "invalid YAML" in msg
    tab = tmp_path / "tab.yaml"
    tab.write_text("optim:\n\tlr: 1\n")
    assert _err([], tab).startswith(f"{tab}:2:")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "is not UTF-8 text" in _err([], binary)


def test_cli_prints_one_line_for_malformed_yaml_and_bad_data_dir(tmp_path, capsys, tiny_data):
    p = tmp_path / "bad.yaml"
    p.write_text("model: {preset: nano\n")
    assert main(["data", "prepare", "--config", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nexus data: error: {p}:") and "\n" not in err
    notdir = tmp_path / "file"
    notdir.write_text("x")
    sources = str(tiny_data["sources"]).replace("'", '"')
    assert main(["data", "prepare", "--set", f"data.data_dir={notdir}", "--set", "data.vocab_size=300",
                 "--set", f"data.sources={sources}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"nexus data: error: data.data_dir: {str(notdir)!r} exists and is not a directory"

"""Byte-level BPE: exact round trips (unicode included) and loading from a file or an HF dir."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_optim.data import load_tokenizer, train_bpe
from nexus_optim.data.tokenizer import EOS

CORPUS = [
    "The quick brown fox jumps over the lazy dog. 12 + 30 = 42.",
    "def f(x):\n    return x ** 2  # square\n",
    "Größe, café, naïve — “quotes” and emoji 🎉🚀; 日本語のテキスト; русский текст.",
] * 20


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    return train_bpe(iter(CORPUS), 300, tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def tok(tok_path):
    return load_tokenizer(tok_path)


def test_special_tokens_and_size(tok):
    assert len(tok) == 300
    assert tok.eos_token == tok.bos_token == tok.pad_token == EOS
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == EOS


@pytest.mark.parametrize("text", [
    "", " leading and trailing spaces  ", "tabs\tand\nnewlines\r\n", "Größe café 🎉 日本語 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "x = 3.14159; y = 1_000_000", "  \n\n    indented code\n", "unseen: ǅ ₿ ﷽ \u200b\u0301",
])
def test_round_trip_examples(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_round_trip_any_unicode(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_digits_are_split(tok):
    assert len(tok.encode("12345", add_special_tokens=False)) == 5


def test_load_from_hf_dir(tok, tmp_path):
    tok.save_pretrained(tmp_path / "hf")
    again = load_tokenizer(tmp_path / "hf")
    text = "Größe 🎉 def f(x): return 42"
    assert again.encode(text) == tok.encode(text) and again.eos_token == EOS
    assert again.decode(again.encode(text, add_special_tokens=False)) == text


def test_load_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="data.tokenizer"):
        load_tokenizer(tmp_path / "nope.json")

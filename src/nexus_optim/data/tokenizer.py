"""Byte-level BPE training (HF ``tokenizers``) and loading as a ``PreTrainedTokenizerFast``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from nexus_optim.runtime import atomic_path

EOS = "<|endoftext|>"


def train_bpe(texts_iter: Iterable[str], vocab_size: int, out_path: str | os.PathLike) -> str:
    """Train a byte-level BPE on ``texts_iter`` and write ``tokenizer.json`` to ``out_path`` (atomically).

    Digits are split into single tokens (helps arithmetic); ``<|endoftext|>`` is the only
    special token and serves as EOS, BOS and pad. Returns the path written.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts_iter, trainer)
    with atomic_path(out_path) as tmp:
        tok.save(str(tmp))
    return str(out_path)


def load_tokenizer(path: str | os.PathLike):
    """A ``transformers.PreTrainedTokenizerFast`` from a ``tokenizer.json`` file or an HF tokenizer dir.

    For a bare ``tokenizer.json`` that contains ``<|endoftext|>``, it becomes EOS/BOS/pad.
    """
    from transformers import PreTrainedTokenizerFast

    p = Path(path)
    if p.is_dir():
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(p))
        except Exception as e:  # corrupt tokenizer.json / config: name the directory, one line
            raise ValueError(f"data.tokenizer: cannot load the tokenizer in {str(p)!r}: {_first_line(e)}") from e
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"data.tokenizer: {str(p)!r} is not a fast (tokenizer.json) tokenizer")
    elif p.is_file():
        try:
            tok = PreTrainedTokenizerFast(tokenizer_file=str(p), clean_up_tokenization_spaces=False)
        except Exception as e:  # e.g. a truncated file: "EOF while parsing ..."
            raise ValueError(f"{str(p)}: not a valid tokenizer.json ({_first_line(e)})") from e
        if tok.convert_tokens_to_ids(EOS) not in (None, tok.unk_token_id):
            tok.add_special_tokens({"eos_token": EOS, "bos_token": EOS, "pad_token": EOS})
    else:
        raise ValueError(f"data.tokenizer: no tokenizer.json file or directory at {str(p)!r}")
    if tok.eos_token_id is None:
        raise ValueError(f"data.tokenizer: {str(p)!r} defines no EOS token (needed to separate documents)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def eos_id(tok) -> int:
    return int(tok.eos_token_id)

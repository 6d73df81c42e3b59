"""Validation losses per source: mean next-token NLL (nats/token) and bits/byte.

    loss_s   = (1/N_s) sum_t -log p(x_t | x_<t)      over the first ``max_tokens`` of
                                                     source s's val split, in windows
    bits/byte = loss_s * N_s / (ln 2 * B_s)          B_s = UTF-8 bytes of those tokens
    in-distribution loss = sum_s w_s loss_s / sum_s w_s   over train sources (weights w_s)

``N_s`` counts the predicted positions (every window's tokens but its first, EOS included);
``B_s`` their UTF-8 bytes (EOS = 0 bytes), exact for byte-level BPE (`token_byte_lengths`).
`evaluate_losses` is what ``nexus eval`` reports; `evaluate_sources` is the training-time view.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from nexus_optim.data.windows import iter_eval_windows, num_eval_windows
from nexus_optim.runtime import autocast_for


@torch.no_grad()
def token_nll(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token NLL in nats, number of predicted tokens) for a batch."""
    logits = model(input_ids=input_ids).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
    return float(nll), targets.numel()


@torch.no_grad()
def source_loss(model, tokens, seq_len: int, batch_size: int, max_tokens: int | None,
                device: torch.device, bf16: bool = True) -> tuple[float, int]:
    """Mean NLL (nats/token) over deterministic windows of a token array; (loss, n_tokens)."""
    m = source_metrics(model, tokens, seq_len, batch_size, max_tokens, device, bf16)
    return m["loss"], m["tokens"]


def evaluate_sources(model, prepared, seq_len: int, batch_size: int, max_tokens: int | None,
                     device: torch.device, bf16: bool = True) -> dict[str, float]:
    """``{"val/<source>": loss}`` for every source, plus ``val/id`` (weighted train
    sources) and ``val/ood`` (mean over ood sources)."""
    out: dict[str, float] = {}
    for name, splits in prepared.shards.items():
        if "val" in splits:
            out[f"val/{name}"], _ = source_loss(model, prepared.load(name, "val"), seq_len,
                                                batch_size, max_tokens, device, bf16)
    out.update(pooled_losses(out, prepared.roles, prepared.weights))
    return out


def pooled_losses(losses: dict[str, float], roles: dict[str, str],
                  weights: dict[str, float]) -> dict[str, float]:
    train = [(weights[s], losses[f"val/{s}"]) for s, r in roles.items()
             if r == "train" and f"val/{s}" in losses and weights[s] > 0]
    ood = [losses[f"val/{s}"] for s, r in roles.items() if r == "ood" and f"val/{s}" in losses]
    out = {}
    if train:
        out["val/id"] = sum(w * l for w, l in train) / sum(w for w, _ in train)
    if ood:
        out["val/ood"] = sum(ood) / len(ood)
    return out


def bits_per_byte(loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    return loss_nats * n_tokens / (math.log(2) * n_bytes)


# --------------------------------------------------------------------------- bits per byte
def _byte_level_alphabet() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet: printable code point -> the byte it stands for.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
    themselves; every other byte b (in increasing order) is shifted to code point 256 + k,
    k = 0, 1, ... (the standard GPT-2 style byte-level encoding).
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    out, k = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(256 + k)] = b
            k += 1
    return out


def _is_byte_level(tokenizer) -> bool:
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    dec = json.loads(backend.to_str()).get("decoder") or {}
    kinds = [dec.get("type")] + [d.get("type") for d in dec.get("decoders", []) or []]
    return "ByteLevel" in kinds


def token_byte_lengths(tokenizer) -> np.ndarray | None:
    """UTF-8 bytes of every token id, or None if the tokenizer is not byte-level BPE.

    For a byte-level tokenizer the bytes of a token sequence are the concatenation of each
    token's bytes, so ``lengths[ids].sum()`` is exactly ``len(decode(ids).encode())`` for any
    span, even one that starts or ends inside a multi-byte character. Special tokens (EOS)
    count 0 bytes, like ``PreparedData.val_bytes``; other added tokens count their text.
    """
    if not _is_byte_level(tokenizer):
        return None
    alphabet = _byte_level_alphabet()
    backend = tokenizer.backend_tokenizer
    added = {i: t for i, t in backend.get_added_tokens_decoder().items()}
    n = len(tokenizer)
    out = np.zeros(n, dtype=np.int64)
    for i in range(n):
        if i in added:
            out[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
            continue
        piece = backend.id_to_token(i)
        if piece is None:
            continue
        out[i] = len(piece) if all(c in alphabet for c in piece) else len(piece.encode("utf-8"))
    return out


def span_bytes(ids: torch.Tensor, tokenizer, byte_lengths: np.ndarray | None) -> int:
    """UTF-8 bytes of the tokens ``ids`` ([b, t]): exact via ``byte_lengths``, else by decoding
    each row (special tokens skipped)."""
    if byte_lengths is not None:
        return int(byte_lengths[ids.cpu().numpy()].sum())
    return sum(len(tokenizer.decode(row.tolist(), skip_special_tokens=True).encode("utf-8"))
               for row in ids)


@torch.no_grad()
def source_metrics(model, tokens, seq_len: int, batch_size: int, max_tokens: int | None,
                   device: torch.device, bf16: bool = True, tokenizer=None,
                   byte_lengths: np.ndarray | None = None, bar=None) -> dict:
    """NLL over the deterministic eval windows of one val split (see module docstring).

    Returns ``{"loss", "bits_per_byte", "nll_sum", "tokens", "bytes"}`` where ``tokens`` and
    ``bytes`` count exactly the predicted positions (every window's tokens but its first).
    ``bar`` (a tqdm) is advanced by the number of windows done.
    """
    was_training = model.training
    model.eval()
    total, count, nbytes = 0.0, 0, 0
    try:
        for batch in iter_eval_windows(tokens, seq_len, batch_size, max_tokens):
            with autocast_for(device, bf16):
                s, n = token_nll(model, batch.to(device))
            total, count = total + s, count + n
            if tokenizer is not None or byte_lengths is not None:
                nbytes += span_bytes(batch[:, 1:], tokenizer, byte_lengths)
            if bar is not None:
                bar.update(batch.size(0))
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"eval: a val split has fewer than {seq_len} tokens")
    loss = total / count
    return {"loss": loss, "bits_per_byte": bits_per_byte(loss, count, nbytes) if nbytes else None,
            "nll_sum": total, "tokens": count, "bytes": nbytes}


def evaluate_losses(model, prepared, seq_len: int, batch_size: int = 16,
                    max_tokens: int | None = None, device: torch.device | str = "cpu",
                    bf16: bool = True, tokenizer=None, progress: bool = True) -> dict:
    """Validation loss of every source in nats/token and bits/byte, pooled in-distribution
    (mixture weights of the train sources) and per held-out OOD source.

    ``{"sources": {name: {"role", "weight", "loss", "bits_per_byte", "tokens", "bytes"}},
       "id": {"loss", "bits_per_byte"}, "ood": {"loss", "bits_per_byte"} (mean over OOD sources),
       "summary": {"val/<s>", "bpb/<s>", "val/id", "bpb/id", "val/ood", "bpb/ood"},
       "bytes_exact": bool, "seq_len", "max_tokens"}``
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    tokenizer = tokenizer if tokenizer is not None else prepared.tokenizer()
    byte_lengths = token_byte_lengths(tokenizer)
    names = [s for s, splits in prepared.shards.items() if "val" in splits]
    arrays = {s: prepared.load(s, "val") for s in names}
    total = sum(num_eval_windows(len(a), seq_len, max_tokens) for a in arrays.values())
    sources: dict[str, dict] = {}
    with tqdm(total=total, disable=not progress, unit="win", desc="eval losses",
              dynamic_ncols=True) as bar:
        for s in names:
            bar.set_postfix(source=s)
            m = source_metrics(model, arrays[s], seq_len, batch_size, max_tokens, device, bf16,
                               tokenizer=tokenizer, byte_lengths=byte_lengths, bar=bar)
            sources[s] = {"role": prepared.roles.get(s, "train"), "weight": prepared.weights.get(s, 0.0),
                          **{k: m[k] for k in ("loss", "bits_per_byte", "tokens", "bytes")}}
    summary: dict[str, float] = {}
    for s, m in sources.items():
        summary[f"val/{s}"] = m["loss"]
        summary[f"bpb/{s}"] = m["bits_per_byte"]
    losses = {f"val/{s}": m["loss"] for s, m in sources.items()}
    bpbs = {f"val/{s}": m["bits_per_byte"] for s, m in sources.items()}
    roles = {s: sources[s]["role"] for s in sources}
    weights = {s: sources[s]["weight"] for s in sources}
    pooled_l, pooled_b = pooled_losses(losses, roles, weights), pooled_losses(bpbs, roles, weights)
    out = {"sources": sources, "seq_len": seq_len, "max_tokens": max_tokens,
           "bytes_exact": byte_lengths is not None}
    for key in ("id", "ood"):
        if f"val/{key}" in pooled_l:
            out[key] = {"loss": pooled_l[f"val/{key}"], "bits_per_byte": pooled_b[f"val/{key}"]}
            summary[f"val/{key}"] = pooled_l[f"val/{key}"]
            summary[f"bpb/{key}"] = pooled_b[f"val/{key}"]
    out["summary"] = summary
    return out

"""Run configuration: dataclasses, YAML files and ``--set key=value`` overrides.

A config has five sections: ``data`` (``nexus_optim.data.config.DataConfig``),
``model``, ``optim``, ``schedule`` and ``train``. Every key is documented in
``configs/nano.yaml``. Errors are one line naming the key and the allowed values
(a ValueError, printed by the CLI without a traceback): unknown keys, wrong types,
``inf``/``nan`` anywhere, ``model.overrides`` that are not LlamaConfig fields (or try to
set ``vocab_size``), ``seq_len`` above ``max_position_embeddings``, and malformed YAML
(named with file and line).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nexus_optim.data.config import DataConfig
from nexus_optim.data.sampler import MODES
from nexus_optim.train.yaml_limits import parse_yaml, read_yaml  # noqa: F401  (callers import them from here too)
from nexus_optim.optim.distributed import INNER_SYNC_MODES
from nexus_optim.train.parallel import PARALLEL

OPTIMIZERS = ("adamw", "nexus", "fish", "random-control", "muon", "nexus-muon")
SCHEDULES = ("cosine", "wsd", "constant")
SAMPLINGS = MODES  # data/sampler.py: homogeneous | mixed | mixed-paired
DEVICES = ("auto", "cpu", "cuda")
INNER_SYNCS = tuple(m for m in INNER_SYNC_MODES if m != "none")  # optim's modes less "none"


@dataclass
class ModelConfig:
    preset: str = "nano"  # nano | micro | 130m | 350m | 1b | 3b
    seq_len: int = 128
    overrides: dict = field(default_factory=dict)  # LlamaConfig fields, e.g. {num_hidden_layers: 2}
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each decoder layer in backward (train/parallel.py)
    init_seed: int | None = None  # None: use train.seed


@dataclass
class OptimConfig:
    name: str = "nexus"  # adamw | nexus | fish | random-control
    lr: float = 3e-3  # outer (AdamW) learning rate; the Fish meta step for "fish"
    weight_decay: float = 0.1
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # clip of the (outer) gradient; null = no clipping
    inner_steps: int = 4  # K micro-batches per outer step (AdamW: accumulation steps)
    inner_lr: float = 0.05  # gamma (nexus, fish, random-control)
    inner_norm: str = "global"  # nexus: global | per_tensor | none | random
    outer_grad: str = "trajectory"  # nexus: trajectory | displacement
    inner_lr_follows_lr: bool = False
    inner_lr_scale: str = "absolute"  # absolute | lr_sqrt_params: inner_lr relative to lr*sqrt(#params) (optim/gamma.py)
    no_decay_norms_and_biases: bool = True


@dataclass
class ScheduleConfig:
    kind: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 10  # outer steps
    min_lr_ratio: float = 0.1  # final lr / peak lr (cosine, wsd)
    decay_fraction: float = 0.2  # wsd: fraction of steps in the final decay


@dataclass
class TrainConfig:
    out_dir: str = "runs/nano"
    seed: int = 0
    steps: int = 100  # outer steps; tokens = steps * inner_steps * micro_batch_size * seq_len
    micro_batch_size: int = 8
    sampling: str = "homogeneous"  # homogeneous (one source per micro-batch) | mixed | mixed-paired
    shuffle_sources: bool = True  # homogeneous: each outer step visits sources in random order
    eval_every: int = 25  # outer steps (0 = only at the end)
    eval_tokens: int = 16384  # tokens per source per evaluation
    eval_batch_size: int = 16
    grad_sim_batches: int = 0  # >0: log the source gradient cosine matrix at each eval
    ckpt_every: int = 50  # outer steps (0 = only at the end)
    keep_checkpoints: int = 2
    log_every: int = 5
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU); fsdp: MixedPrecisionPolicy, any device
    inner_sync: str = "sync"  # torchrun: sync (all-reduce every micro-batch) | local
    parallel: str = "ddp"  # torchrun: ddp (replicated) | fsdp (FSDP2, sharded; inner_sync sync)
    progress: bool = True
    prefetch: int = 0  # micro-batches drawn ahead in a thread (data/prefetch.py); 0: none
    export_hf: bool = True  # save_pretrained + tokenizer to out_dir/hf at the end
    threads: int | None = None  # torch.set_num_threads on CPU


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def tokens_per_step(self) -> int:
        return self.optim.inner_steps * self.train.micro_batch_size * self.model.seq_len


_SECTIONS = {"model": ModelConfig, "optim": OptimConfig, "schedule": ScheduleConfig,
             "train": TrainConfig}


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, annotation)


def _section(cls: type, values: Any, where: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = dict(values)
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"{where}.{key}: unknown key; allowed keys: {', '.join(names)}")
        if isinstance(value, str) and _type_ok(1.5, hints[key]):  # YAML reads 3e-3 as a str
            try:
                value = values[key] = float(value)
            except ValueError:
                pass
            else:
                check_finite(value, f"{where}.{key}")
        if not _type_ok(value, hints[key]):
            tname = getattr(hints[key], "__name__", None) or str(hints[key]).replace("typing.", "")
            raise ValueError(f"{where}.{key}: expected {tname}, got {value!r}")
    return cls(**values)


def _choice(where: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{where}: {value!r} is not one of " + ", ".join(map(repr, allowed)))


def _positive(where: str, value: Any, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{where}: must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


#: Bounds on sizes, checked before anything is allocated or written. They do not depend on
#: the machine (a config valid here is valid everywhere): a single tensor, or the fp32
#: weights, larger than MAX_TENSOR_BYTES fit on no single device (the largest accelerators
#: hold 141-192 GB), so such a config can only fail later, with a MemoryError or an abort.
MAX_TENSOR_BYTES = 1 << 37    # 128 GiB
MAX_SEQ_LEN = 1 << 20         # tokens per sequence
MAX_BATCH = 1 << 16           # sequences per micro-batch / eval batch
MAX_THREADS = 1024            # train.threads
MAX_SEED = 2**32 - 1          # numpy's legacy seeding range; torch and SeedSequence accept it


def _bounded(where: str, value: Any, lo: int, hi: int, why: str = "") -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{where}: must be in [{lo}, {hi}]{why}, got {value!r}")


def _gib(n: float) -> str:
    return f"{n / 2**30:,.0f} GiB"


def estimated_parameters(cfg: "Config", vocab_size: int) -> int:
    """Parameters of the Llama the config builds (preset + overrides): embeddings, attention
    (grouped KV heads included) and the gated MLP; norms are negligible."""
    from nexus_optim.models.presets import PRESETS

    a = {**PRESETS.get(cfg.model.preset, {}), **cfg.model.overrides}
    h, layers = int(a.get("hidden_size", 0)), int(a.get("num_hidden_layers", 0))
    heads = int(a.get("num_attention_heads", 1) or 1)
    head_dim = int(a.get("head_dim") or h // heads)
    kv = int(a.get("num_key_value_heads") or heads) * head_dim
    attn = h * heads * head_dim * 2 + h * kv * 2
    mlp = 3 * h * int(a.get("intermediate_size", 0))
    emb = vocab_size * h * (1 if a.get("tie_word_embeddings") else 2)
    return emb + layers * (attn + mlp)


def check_sizes(cfg: "Config") -> None:
    """Every size bounded before anything is allocated (one-line ValueError naming the key):
    sequence and batch lengths, the logits of one micro-batch / eval batch, and the weights."""
    from nexus_optim.data.config import MAX_VOCAB

    t, vocab = cfg.train, cfg.data.vocab_size
    _bounded("model.seq_len", cfg.model.seq_len, 1, MAX_SEQ_LEN)
    for key in ("micro_batch_size", "eval_batch_size"):
        n = getattr(t, key)
        _bounded(f"train.{key}", n, 1, MAX_BATCH)
        logits = n * cfg.model.seq_len * min(vocab, MAX_VOCAB) * 4
        if logits > MAX_TENSOR_BYTES:
            raise ValueError(
                f"train.{key}: {n} x model.seq_len {cfg.model.seq_len} x data.vocab_size {vocab} fp32 "
                f"logits are {_gib(logits)} in one tensor, more than any single device holds "
                f"(limit {_gib(MAX_TENSOR_BYTES)}); lower train.{key} (raise optim.inner_steps to keep "
                f"the tokens per step)")
    params = estimated_parameters(cfg, vocab)
    if params * 4 > MAX_TENSOR_BYTES:
        raise ValueError(f"model: preset {cfg.model.preset!r} with model.overrides has about {params:,} "
                         f"parameters ({_gib(params * 4)} in fp32), more than any single device holds "
                         f"(limit {_gib(MAX_TENSOR_BYTES)})")


def check_finite(value: Any, where: str) -> None:
    """Refuse ``inf``/``nan`` anywhere in a (nested) config value, naming the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: must be a finite number, got {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{where}[{i}]")


def validate(cfg: Config) -> None:
    """Cross-field checks; one-line ValueError naming the key."""
    from nexus_optim.models.presets import PRESETS, check_overrides

    check_finite(cfg.to_dict(), "")
    _choice("model.preset", cfg.model.preset, tuple(PRESETS))
    _positive("model.seq_len", cfg.model.seq_len)
    if cfg.model.init_seed is not None:
        _bounded("model.init_seed", cfg.model.init_seed, 0, MAX_SEED)
    check_overrides(cfg.model.overrides, cfg.model.preset, cfg.model.seq_len, cfg.data.vocab_size)
    o = cfg.optim
    _choice("optim.name", o.name, OPTIMIZERS)
    _choice("optim.inner_norm", o.inner_norm, ("global", "per_tensor", "none", "random"))
    _choice("optim.outer_grad", o.outer_grad, ("trajectory", "displacement"))
    _positive("optim.lr", o.lr, zero_ok=True)
    _positive("optim.inner_lr", o.inner_lr, zero_ok=True)
    _positive("optim.inner_steps", o.inner_steps)
    _positive("optim.weight_decay", o.weight_decay, zero_ok=True)
    if o.name != "fish" and o.lr * o.weight_decay >= 1:  # fish's outer SGD takes no decay
        raise ValueError(
            f"optim.weight_decay: {o.weight_decay!r} with optim.lr {o.lr!r}: decoupled decay multiplies "
            f"every weight by 1 - lr*weight_decay = {1 - o.lr * o.weight_decay:.3g} per step, which "
            f"zeroes or flips them; lr*weight_decay must be < 1 (typical: 1e-4 .. 1e-2)")
    if not o.eps > 0:
        raise ValueError(f"optim.eps: must be > 0 (it keeps Adam's division finite), got {o.eps!r}")
    if o.max_grad_norm is not None:
        _positive("optim.max_grad_norm", o.max_grad_norm)
    if (len(o.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in o.betas)
            or not all(0 <= b < 1 for b in o.betas)):
        raise ValueError(f"optim.betas: expected two numbers in [0, 1), got {o.betas!r}")
    s = cfg.schedule
    _choice("schedule.kind", s.kind, SCHEDULES)
    _positive("schedule.warmup_steps", s.warmup_steps, zero_ok=True)
    if not 0 <= s.min_lr_ratio <= 1:
        raise ValueError(f"schedule.min_lr_ratio: must be in [0, 1], got {s.min_lr_ratio!r}")
    if not 0 < s.decay_fraction <= 1:
        raise ValueError(f"schedule.decay_fraction: must be in (0, 1], got {s.decay_fraction!r}")
    t = cfg.train
    for key in ("steps", "micro_batch_size", "eval_tokens", "eval_batch_size", "log_every",
                "keep_checkpoints"):
        _positive(f"train.{key}", getattr(t, key))
    _bounded("train.prefetch", t.prefetch, 0, 64)
    for key in ("eval_every", "ckpt_every", "grad_sim_batches"):
        _positive(f"train.{key}", getattr(t, key), zero_ok=True)
    _bounded("train.seed", t.seed, 0, MAX_SEED)
    if t.threads is not None:
        _bounded("train.threads", t.threads, 0, MAX_THREADS, " (0 or null: torch's default)")
    if not isinstance(t.out_dir, str) or not t.out_dir:
        raise ValueError(f"train.out_dir: expected a non-empty path, got {t.out_dir!r}")
    check_sizes(cfg)
    _choice("train.sampling", t.sampling, SAMPLINGS)
    _choice("train.device", t.device, DEVICES)
    _choice("train.inner_sync", t.inner_sync, INNER_SYNCS)
    _check_parallel(t, o)


def _check_parallel(t: TrainConfig, o: OptimConfig) -> None:
    """``train.parallel`` and what FSDP2 (sharded parameters) cannot do."""
    _choice("train.parallel", t.parallel, PARALLEL)
    if t.parallel == "fsdp" and t.inner_sync == "local":
        raise ValueError("train.inner_sync: 'local' needs replicated parameters, and "
                         "train.parallel=fsdp shards them; use inner_sync=sync or parallel=ddp")
    if t.parallel == "fsdp" and o.name in ("muon", "nexus-muon"):
        raise ValueError(f"optim.name: {o.name!r} orthogonalizes whole weight matrices and "
                         "train.parallel=fsdp shards them (not supported together); use parallel=ddp")
    if t.parallel == "fsdp" and t.grad_sim_batches:
        raise ValueError("train.grad_sim_batches: not measured during a train.parallel=fsdp run "
                         "(sharded parameters); set it to 0 and run `nexus geometry grad-sim` on a "
                         "checkpoint, or use parallel=ddp")


def from_dict(d: dict | None) -> Config:
    """Build and validate a Config from a plain nested dict."""
    d = dict(d or {})
    for key in d:
        if key not in ("data", *_SECTIONS):
            raise ValueError(f"{key}: unknown section; allowed: data, {', '.join(_SECTIONS)}")
    check_finite(d, "")
    kwargs = {name: _section(cls, d.get(name), name) for name, cls in _SECTIONS.items()}
    cfg = Config(data=DataConfig.from_dict(d.get("data")), **kwargs)
    validate(cfg)
    return cfg


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (value parsed as YAML) to a nested dict."""
    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-3")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part!r} is not a section")
        try:
            node[parts[-1]] = parse_yaml(raw, f"--set {key}")
        except ValueError as e:
            raise ValueError(f"--set {key}: value {raw[:80]!r} is not valid YAML ({str(e).split('invalid YAML: ')[-1]})") from None
    return d


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (optional) + overrides -> validated Config."""
    d: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ValueError(f"--config: no such file {str(p)!r}")
        if not p.is_file():  # a directory, FIFO or device: never opened (a FIFO would block)
            raise ValueError(f"--config: {str(p)!r} is not a regular file")
        d = read_yaml(p) or {}
        if not isinstance(d, dict):
            raise ValueError(f"--config: {str(p)!r} must hold a mapping of sections")
    return from_dict(apply_overrides(d, overrides or []))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

"""Data configuration: sources, the default mixture, and one-line validation errors."""

from __future__ import annotations

import copy
import dataclasses
import glob
import math
import re
from dataclasses import dataclass, field
from typing import Any

ROLES = ("train", "ood")
#: data.vocab_size above this is refused: the BPE trainer reserves memory per requested
#: entry (2**31 asked for 141 GB and aborted), and no tokenizer in use comes near it (the
#: largest public ones have ~262k entries). Shards switch to uint32 at 65536.
MAX_VOCAB = 1 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class SourceConfig:
    """One corpus: a builtin builder (``kind``) or user files (``kind="files"``)."""

    name: str
    kind: str
    weight: float = 1.0
    role: str = "train"  # "train" | "ood" (ood is never trained on: it only gets a val split)
    paths: list[str] = field(default_factory=list)  # files or globs, for kind="files"
    max_chars: int | None = None  # cap on the source's text; None = the kind's default
    options: dict = field(default_factory=dict)  # kind-specific, see docs/data.md

    @classmethod
    def from_dict(cls, d: Any, where: str = "source") -> "SourceConfig":
        """Build from a plain dict (e.g. parsed YAML), naming unknown keys."""
        if isinstance(d, SourceConfig):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
        _check_keys(d, cls, where)
        return cls(**d)


def _src(name: str, kind: str, role: str = "train", max_chars: int | None = None, **options) -> SourceConfig:
    return SourceConfig(name=name, kind=kind, role=role, max_chars=max_chars, options=options)


# The default mixture: three train sources (prose, math, code) and three held-out (ood) ones
# (formal logic, C++, German/French GSM), all from PyPI packages: no apt-get (docs/data.md).
# Until 0.3 the default was the Debian mixture the CPU study still names (experiments/design.py).
DEFAULT_SOURCES: list[SourceConfig] = [
    _src("prose", "prose", max_chars=4_000_000, parts=["gcide_json", "kjv", "shakespeare", "fortunes_bsd"]),
    _src("math", "math", max_chars=3_000_000),
    _src("code", "code", max_chars=4_000_000),
    _src("ood_logic", "metamath_logic", role="ood", max_chars=600_000),
    _src("ood_cpp", "cpp", role="ood", max_chars=600_000),
    _src("ood_gsm_multilingual", "gsm_multilingual", role="ood", max_chars=600_000),
]


@dataclass
class DataConfig:
    """Everything `prepare_data` needs; validated on construction (see `validate`)."""

    data_dir: str = "data"
    sources: list[SourceConfig] = field(default_factory=lambda: copy.deepcopy(DEFAULT_SOURCES))
    val_fraction: float = 0.05
    vocab_size: int = 4096
    tokenizer: str | None = None  # tokenizer.json or an HF tokenizer dir; None = train a byte-level BPE
    seed: int = 0

    def __post_init__(self) -> None:
        self.sources = [SourceConfig.from_dict(s, f"data.sources[{i}]") for i, s in enumerate(self.sources)]
        self.validate()

    @classmethod
    def from_dict(cls, d: dict | None) -> "DataConfig":
        """Build from a plain dict (e.g. the ``data:`` section of a YAML file)."""
        d = dict(d or {})
        _check_keys(d, cls, "data")
        if "sources" in d:
            if not isinstance(d["sources"], list):
                raise ValueError("data.sources: expected a list of sources")
            d["sources"] = [SourceConfig.from_dict(s, f"data.sources[{i}]") for i, s in enumerate(d["sources"])]
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ValueError with a one-line message naming the offending field."""
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise ValueError(f"data.data_dir: expected a non-empty path, got {self.data_dir!r}")
        vf = self.val_fraction
        if not isinstance(vf, (int, float)) or not 0.0 < vf < 1.0:
            raise ValueError(f"data.val_fraction: {vf!r} must be a number in (0, 1)")
        vs = self.vocab_size
        if not isinstance(vs, int) or isinstance(vs, bool) or not 260 <= vs <= MAX_VOCAB:
            raise ValueError(f"data.vocab_size: {vs!r} must be an integer in [260, {MAX_VOCAB}] "
                             f"(256 bytes + specials; the BPE trainer's memory grows with it)")
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            raise ValueError(f"data.tokenizer: expected a path or null, got {self.tokenizer!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= 2**32 - 1:
            raise ValueError(f"data.seed: {self.seed!r} must be an integer in [0, {2**32 - 1}]")
        if not isinstance(self.sources, list) or not self.sources:
            raise ValueError("data.sources: at least one source is required")
        seen: set[str] = set()
        for i, s in enumerate(self.sources):
            _validate_source(s, f"data.sources[{i}]")
            if s.name in seen:
                raise ValueError(f"data.sources[{i}].name: duplicate source name {s.name!r}")
            seen.add(s.name)
        if not any(s.role == "train" and s.weight > 0 for s in self.sources):
            raise ValueError("data.sources: at least one source needs role 'train' and weight > 0")


def _check_keys(d: dict, cls: type, where: str) -> None:
    allowed = [f.name for f in dataclasses.fields(cls)]
    for k in d:
        if k not in allowed:
            raise ValueError(f"{where}: unknown key {k!r}; allowed keys: {', '.join(allowed)}")


def _validate_source(s: SourceConfig, where: str) -> None:
    from nexus_optim.data.sources import KINDS  # lazy: keeps config importable on its own

    if not isinstance(s.name, str) or not _NAME_RE.match(s.name):
        raise ValueError(f"{where}.name: {s.name!r} must be non-empty and use only letters, digits, '_', '-', '.'")
    if s.kind not in KINDS:
        raise ValueError(f"{where}.kind: {s.kind!r} is not one of {', '.join(repr(k) for k in KINDS)}")
    if s.role not in ROLES:
        raise ValueError(f"{where}.role: {s.role!r} is not one of {', '.join(repr(r) for r in ROLES)}")
    w = s.weight
    if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
        raise ValueError(f"{where}.weight: {w!r} must be a finite number >= 0")
    mc = s.max_chars
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc <= 0):
        raise ValueError(f"{where}.max_chars: {mc!r} must be a positive integer or null")
    if not isinstance(s.options, dict):
        raise ValueError(f"{where}.options: expected a mapping, got {type(s.options).__name__}")
    allowed = KINDS[s.kind].options
    for k in s.options:
        if k not in allowed:
            names = ", ".join(repr(a) for a in allowed) or "none"
            raise ValueError(f"{where}.options: unknown option {k!r} for kind {s.kind!r}; allowed: {names}")
    parts = KINDS[s.kind].parts
    for p in s.options.get("parts", []) if parts else []:
        if p not in parts:
            raise ValueError(f"{where}.options.parts: {p!r} is not one of {', '.join(repr(x) for x in parts)}")
    for p in parts:
        if p in s.options and not isinstance(s.options[p], dict):
            raise ValueError(f"{where}.options.{p}: expected a mapping of {p!r} options")
    if not isinstance(s.paths, list) or not all(isinstance(p, str) for p in s.paths):
        raise ValueError(f"{where}.paths: expected a list of file paths or globs")
    if s.kind == "files":
        if not s.paths:
            raise ValueError(f"{where}.paths: kind 'files' needs at least one file path or glob")
        for j, p in enumerate(s.paths):
            if not glob.glob(p, recursive=True):
                raise ValueError(f"{where}.paths[{j}]: no file matches {p!r}")
        o = s.options
        if "field" in o and (not isinstance(o["field"], str) or not o["field"]):
            raise ValueError(f"{where}.options.field: {o['field']!r} must be a column / JSON key name")
        cc = o.get("chunk_chars", 1)
        if not isinstance(cc, int) or isinstance(cc, bool) or cc <= 0:
            raise ValueError(f"{where}.options.chunk_chars: {cc!r} must be a positive integer")
        if not isinstance(o.get("doc_per_file", False), bool):
            raise ValueError(f"{where}.options.doc_per_file: {o['doc_per_file']!r} must be true or false")
    elif s.paths:
        raise ValueError(f"{where}.paths: only kind 'files' takes paths (kind is {s.kind!r})")

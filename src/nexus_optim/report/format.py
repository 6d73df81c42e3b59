"""How numbers look in a comparison report (report.md and the verdict sentences).

One rule per kind of number:

    token counts   integers with thousands separators: ``459,900 ± 44,670``
    p-values       2 significant digits (``0.045``, ``0.50``, ``1.0``), ``< 0.001`` below that
    other values   (losses, differences, cosines) 4 significant digits *for the scale of the
                   cells they share a column with*: the decimals come from the largest |value|
                   of the group of cells and every cell of it gets the same decimals
                   (``3.046``, ``2.901``; ``+0.00560 [-0.00950, +0.02080]``); a group whose
                   largest |value| is >= 1e6 or below 1e-3 (and not 0) is written in
                   scientific notation with 4 significant digits (``3.142e-05``)

``decimals`` picks the shared decimals of a group; ``fmt_value`` writes one cell with them;
``fmt_column`` does both for a list; ``p_is`` writes ``p = 0.045`` / ``p < 0.001`` in a
sentence. A metric is a count when ``is_count(metric)`` (``tokens``).
Missing or non-finite values are ``n/a``.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

SIG = 4
NA = "n/a"
SCI = None  # the ``decimals`` of a group written in scientific notation


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def is_count(metric: str | None) -> bool:
    """Token counts (``tokens``, ``.../tokens``) are written as integers."""
    return bool(metric) and (metric == "tokens" or metric.endswith("/tokens"))


def decimals(values: Iterable, sig: int = SIG) -> int | None:
    """Decimals that give the largest finite |value| ``sig`` significant digits (at least 0);
    ``SCI`` (None) when that value is >= 1e6 or below 1e-3 but not 0."""
    top = max((abs(float(x)) for x in values if _finite(x)), default=0.0)
    if top == 0.0:
        return sig - 1
    exponent = int(f"{top:.{sig - 1}e}".split("e")[1])  # after rounding: 0.099999 -> 1.000e-01
    if exponent >= 6 or exponent < -3:
        return SCI
    return max(0, sig - 1 - exponent)


def fmt_count(x, signed: bool = False) -> str:
    """``459,900``; ``+12,690`` with ``signed``."""
    if not _finite(x):
        return NA
    return f"{float(x):+,.0f}" if signed else f"{float(x):,.0f}"


def fmt_value(x, digits: int | None, signed: bool = False, sig: int = SIG) -> str:
    """One cell with a group's ``digits`` from ``decimals`` (``SCI``: scientific)."""
    if not _finite(x):
        return NA
    sign = "+" if signed else ""
    if digits is SCI:
        return f"{float(x):{sign}.{sig - 1}e}"
    return f"{float(x):{sign}.{digits}f}"


def formatter(values: Iterable, metric: str | None = None, signed: bool = False, sig: int = SIG):
    """A function writing each of a group's cells the same way (``metric`` picks counts)."""
    if is_count(metric):
        return lambda x: fmt_count(x, signed)
    d = decimals(list(values), sig)
    return lambda x: fmt_value(x, d, signed, sig)


def fmt_column(values: Sequence, metric: str | None = None, signed: bool = False,
               sig: int = SIG) -> list[str]:
    """Every cell of a column with the same decimals (or as counts)."""
    f = formatter(values, metric, signed, sig)
    return [f(x) for x in values]


def fmt_number(x, metric: str | None = None, signed: bool = False) -> str:
    """A lone number: 4 significant digits, or a count."""
    return formatter([x], metric, signed)(x)


def fmt_p(p) -> str:
    """A p-value at 2 significant digits, ``< 0.001`` below 0.001."""
    if not _finite(p):
        return NA
    if float(p) < 0.001:
        return "< 0.001"
    p = float(f"{float(p):.2g}")  # rounded first: 0.0999 -> 0.10, not 0.100
    return f"{p:.{max(0, 1 - math.floor(math.log10(p)))}f}"


def p_is(p, name: str = "p") -> str:
    """``p = 0.045`` or ``p < 0.001`` in a sentence."""
    v = fmt_p(p)
    return f"{name} {v}" if v.startswith("<") else f"{name} = {v}"


def fmt_pm(s: dict, f) -> str:
    """``mean ± std (n=k)`` of a ``stats.summarize`` record, each number written by ``f``."""
    if not s or s.get("n", 0) == 0:
        return NA
    std = f" ± {f(s['std'])}" if s.get("std") is not None else ""
    return f"{f(s['mean'])}{std} (n={s['n']})"


def fmt(x: float | None, digits: int = 4) -> str:
    """A fixed ``digits`` decimals (scientific beyond 1e5 or below 10^-digits): the CPU
    study's tables (``report/study_render.py``) use it."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return NA
    ax = abs(x)
    if ax != 0 and (ax >= 1e5 or ax < 10 ** -digits):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}f}"

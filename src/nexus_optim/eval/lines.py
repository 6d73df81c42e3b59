"""A loss curve along a straight line in weight space, against the chord between its end values.

For a curve L(alpha) sampled at alphas a_0 = 0 < ... < a_n = 1:

    excess   max over the interior alphas (0 < a < 1) of L(a) - ((1 - a) L(0) + a L(1));
             signed: negative when the whole line lies below the chord (the mixture of the
             two end points is better than both); None without an interior alpha
    barrier  max over all alphas of the same, i.e. max(0, excess): the usual loss barrier,
             0 whenever the line never rises above the chord

``diagnostics/barrier.py`` computes both for the closeness record; ``report/study.py`` reads
the signed excess from stored curves (records written before it was stored have the curves).
"""

from __future__ import annotations

import numpy as np


def _above_chord(curve, alphas) -> np.ndarray:
    c, a = np.asarray(curve, dtype=np.float64), np.asarray(alphas, dtype=np.float64)
    if c.shape != a.shape or c.ndim != 1 or c.size < 2:
        raise ValueError(f"line: curve ({c.size} values) and alphas ({a.size}) must match, >= 2")
    return c - (c[0] + a * (c[-1] - c[0]))


def line_barrier(curve, alphas) -> float:
    """max over alpha of ``curve`` minus the chord between its end values (>= 0)."""
    return float(np.max(_above_chord(curve, alphas)))


def line_excess(curve, alphas) -> float | None:
    """max over the interior alphas of ``curve`` minus the chord (signed); None if none."""
    d = _above_chord(curve, alphas)
    return float(np.max(d[1:-1])) if d.size > 2 else None

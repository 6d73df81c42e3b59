import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_optim.eval.lines import line_barrier, line_excess


def test_known_answers():
    a = [0.0, 0.5, 1.0]
    assert line_barrier([0.0, 2.0, 1.0], a) == 1.5 and line_excess([0.0, 2.0, 1.0], a) == 1.5
    # the midpoint below the chord: no barrier, a negative excess (the value the study reads)
    assert line_barrier([3.3, 3.1, 3.5], a) == 0.0
    assert line_excess([3.3, 3.1, 3.5], a) == pytest.approx(3.1 - 3.4)
    assert line_excess([1.0, 2.0], [0.0, 1.0]) is None  # no interior point
    assert line_barrier([1.0, 2.0], [0.0, 1.0]) == 0.0


def test_mismatched_lengths_are_one_line_errors():
    with pytest.raises(ValueError, match="must match"):
        line_excess([1.0, 2.0, 3.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="must match"):
        line_barrier([1.0], [0.0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=3, max_size=9))
def test_against_a_loop_reference(vals):
    """float64 reference, point by point: height above the chord at each alpha."""
    n = len(vals)
    alphas = [i / (n - 1) for i in range(n)]
    heights = [vals[i] - ((1 - alphas[i]) * vals[0] + alphas[i] * vals[-1]) for i in range(n)]
    assert line_excess(vals, alphas) == pytest.approx(max(heights[1:-1]), abs=1e-9)
    assert line_barrier(vals, alphas) == pytest.approx(max(0.0, max(heights[1:-1])), abs=1e-9)
    assert line_barrier(vals, alphas) >= 0.0 and np.isfinite(line_barrier(vals, alphas))

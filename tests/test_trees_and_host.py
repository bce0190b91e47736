"""Trees flatten and rebuild; host powers are exact where they can be and close elsewhere."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from portopt.host_arithmetic import power
from portopt.trees import flatten, leaf_paths, tree_map, unflatten


def test_flatten_unflatten_round_trip_keeps_containers_and_order():
    tree = {"b": [1, (2, 3)], "a": {"x": 4}, "c": ()}
    leaves, treedef = flatten(tree)
    assert leaves == [1, 2, 3, 4]
    assert unflatten(treedef, leaves) == tree
    assert leaf_paths(treedef) == ["['b'][0]", "['b'][1][0]", "['b'][1][1]", "['a']['x']"]
    assert tree_map(lambda x: x * 10, tree) == {"b": [10, (20, 30)], "a": {"x": 40}, "c": ()}


def test_unflatten_checks_the_leaf_count():
    _, treedef = flatten([1, 2])
    with pytest.raises(ValueError, match="fewer leaves"):
        unflatten(treedef, [1])
    with pytest.raises(ValueError, match="more leaves"):
        unflatten(treedef, [1, 2, 3])


def test_structures_differ_by_key_and_container_kind():
    assert flatten({"a": 1})[1] != flatten({"b": 1})[1]
    assert flatten([1])[1] != flatten((1,))[1]
    assert flatten([np.zeros(2), np.ones(3)])[1] == flatten([np.ones(4), np.zeros(1)])[1]


@given(st.floats(min_value=0.0, max_value=1.0), st.integers(min_value=0, max_value=2000))
def test_power_is_the_correctly_rounded_exact_power(base, exponent):
    from portopt.conformance.exact import FORMATS, round_exact

    exact = Fraction(base) ** exponent
    correctly_rounded = round_exact(exact, FORMATS["float64"])
    if exact >= Fraction(2) ** -969:
        assert power(base, exponent) == correctly_rounded
    else:  # the low word underflows: near the subnormal range one rounding more is possible
        assert abs(power(base, exponent) - correctly_rounded) <= 2.0 ** -1074


def test_power_edge_cases():
    assert power(0.9, 0) == 1.0 and power(0.9, 1) == 0.9
    assert power(2.0, 10) == 1024.0 and power(0.5, 3) == 0.125
    with pytest.raises(ValueError, match="exponent must be >= 0"):
        power(0.9, -1)


def test_remembered_powers_are_the_loops_products_through_blocks_and_jumps():
    """A run of consecutive exponents (one per step, across many blocks), jumps, runs after
    jumps, interleaved runs at five step counts (param groups added at different times; more
    than the blocks a level keeps) and bases past overflow and underflow give the bits of the
    square-and-multiply loop itself, zeros' signs and NaNs included."""
    import math

    from portopt import host_arithmetic

    interleaved = [e + offset for e in range(0, 1200, 7) for offset in (3, 10**5, 10**8, 7 * 10**9, 10**6)]
    for base in (0.9, 0.999, 0.5, 0.99999, 1.5, 10.0, -0.7, 1e-5, 5e-324, -1e-300, math.inf, -1.0):
        host_arithmetic._POWERS.pop(base, None)
        exponents = [*range(0, 3000), 123457, 2, *range(500000, 500300), 77, 1 << 20, (1 << 20) + 1, *interleaved]
        got = [power(base, e) for e in exponents]
        loop = [host_arithmetic._power_loop(base, e) for e in exponents]
        assert [(math.isnan(x), x if not math.isnan(x) else 0.0, math.copysign(1.0, x)) for x in got] == \
            [(math.isnan(x), x if not math.isnan(x) else 0.0, math.copysign(1.0, x)) for x in loop], base

"""NumPy, torch CPU and array-api-strict give the same bits, every rule and option, in lockstep.

Independent of the golden vectors: ordinary normal gradients, every backend stepped in
lockstep and compared with NumPy after the last step (params and every state array).
The default tier steps NumPy and torch 200 times (the golden cases run 1000 steps on both); the
long tier steps every backend, array-api-strict (15 µs of checks per operation) included, 1000
times.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import bitwise_targets
from helpers import VARIANTS, advance, make_rule, random_arrays, same_bits, variant_id

STEPS = {False: 200, True: 1000}  # by "with array-api-strict" (the long tier)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[variant_id(v) for v in VARIANTS])
@pytest.mark.parametrize("strict", [pytest.param(False, id="fast-backends"),
                                    pytest.param(True, id="with-strict", marks=pytest.mark.long)])
def test_backends_agree_bitwise(variant, dtype, strict):
    targets = {name: t for name, t in bitwise_targets(dtype).items() if strict or name != "array_api_strict"}
    if strict and "array_api_strict" not in targets:
        pytest.skip(f"array-api-strict is not installed or has no {dtype}")
    if len(targets) < 2:
        pytest.skip(f"fewer than two backends here support {dtype}")
    p0 = random_arrays(2, (33,), dtype, 1)[0]
    grads = random_arrays(3, (33,), dtype, STEPS[strict])
    rule = make_rule(variant)
    runs = {}
    for name, target in targets.items():
        params = target.asarray(p0)
        runs[name] = (target, params, rule.init(params))
    with np.errstate(all="ignore"):
        for g in grads:
            for name, (target, params, state) in runs.items():
                runs[name] = (target, *advance(rule, target, params, target.asarray(g), state))
    reference_target, reference_params, reference_state = runs.pop("numpy")
    assert not same_bits(reference_params, p0), "the params did not move"
    for name, (target, params, state) in runs.items():
        assert same_bits(target.to_numpy(params), reference_params), f"{name} params differ from numpy"
        for slot in rule.slot_names():
            assert same_bits(target.to_numpy(state.slots[slot]), reference_state.slots[slot]), (
                f"{name} state {slot} differs from numpy"
            )

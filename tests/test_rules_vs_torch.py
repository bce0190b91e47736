"""Each rule against torch.optim's single-tensor path over 200 float64 steps, every option.

Not bitwise, and this is why: torch computes ``m`` with ``lerp`` and ``v`` with ``addcmul``
(fused multiply-add on the CPU, so one rounding where portopt has two), orders the
update as ``p + (-step_size) * (m / denom)``, and takes the root with ``torch.sqrt``,
which is not correctly rounded on the CPU. Each of these moves a result by an ulp or so;
in float64 the relative difference therefore stays many orders below 1e-9.
"""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from helpers import VARIANTS, make_rule, random_arrays, variant_id
from portopt.conformance.cases import has_torch_equivalent

torch = pytest.importorskip("torch", reason="torch is not installed")

# From the registry: every rule with a torch.optim peer, and the options that select it.
TORCH_CLASSES = {name: (getattr(torch.optim, rule.torch_peer.name), dict(rule.torch_peer.options))
                 for name, rule in portopt.RULES.items() if rule.torch_peer is not None}
STEPS = 200
TOLERANCE = 1e-9


def _torch_optimizer(variant: dict, param: torch.Tensor):
    cls, extra = TORCH_CLASSES[variant["rule"]]
    options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in variant["options"].items()}
    schedule = None
    if isinstance(options.get("lr"), dict):
        schedule = make_rule(variant).lr  # the same host schedule, applied through group['lr']
        options["lr"] = schedule(0)
    return cls([param], foreach=False, **options, **extra), schedule


def _relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    scale = np.maximum(np.maximum(np.abs(ours), np.abs(theirs)), 1e-300)
    return float(np.max(np.abs(ours - theirs) / scale)) if ours.size else 0.0


TORCH_VARIANTS = [v for v in VARIANTS if v["rule"] in TORCH_CLASSES and has_torch_equivalent(v)]


@pytest.fixture(autouse=True)
def float64_scalars():
    """torch keeps NAdam's mu_product and step counters in the default dtype: make it float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("variant", TORCH_VARIANTS, ids=[variant_id(v) for v in TORCH_VARIANTS])
def test_matches_torch_optim_in_float64(variant):
    p0 = random_arrays(0, (64,), "float64", 1)[0]
    grads = random_arrays(1, (64,), "float64", STEPS)
    rule = make_rule(variant)
    params = p0.copy()
    state = rule.init(params)
    theirs = torch.tensor(p0.copy(), requires_grad=True)
    optimizer, schedule = _torch_optimizer(variant, theirs)
    for step, g in enumerate(grads):
        rule.step(params, g, state)
        if schedule is not None:
            optimizer.param_groups[0]["lr"] = schedule(step)
        theirs.grad = torch.from_numpy(g.copy())
        if "clip_norm" in variant:  # torch's own clipping: a different reduction order, same math
            torch.nn.utils.clip_grad_norm_([theirs], variant["clip_norm"], foreach=False)
        optimizer.step()
    torch_state = optimizer.state[theirs]
    compared = {"params": (params, theirs.detach().numpy())}
    for slot in rule.slot_names():
        compared[slot] = (state.slots[slot], torch_state[slot].numpy())
    assert set(rule.slot_names()) <= set(torch_state), "portopt's state keys are torch's"
    differences = {name: _relative_difference(a, b) for name, (a, b) in compared.items()}
    assert max(differences.values()) < TOLERANCE, differences
    # The comparison has teeth: after 200 steps the params moved far from where they began.
    assert _relative_difference(params, p0) > 1e-3

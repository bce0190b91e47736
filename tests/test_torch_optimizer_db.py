"""The drop-ins against torch's own optimizer test table (``torch.testing._internal.common_optimizers``,
shipped in the torch wheel; it imports ``expecttest``).

For every drop-in torch has a class for: every CPU configuration of ``optim_inputs_func``, in
float32 and float64, trains a small model with torch.optim and with the drop-in on the same
gradients and must agree within ``TOLERANCE`` (not bitwise: torch fuses multiply-adds and
its CPU sqrt is not correctly rounded; see tests/test_rules_vs_torch.py); every entry of
``optim_error_inputs_func`` raises torch's exception type; every ``scheduler_inputs`` entry
drives the drop-in as it drives torch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("expecttest", reason="torch's optimizer table imports expecttest (in the test extra)")
from torch.testing._internal import common_optimizers  # noqa: E402

import portopt.torch as drop_ins  # noqa: E402

STEPS = 20
# Relative difference of the params after STEPS steps; the measured reason for each dtype:
# float64 rounds torch's fused operations and CPU sqrt at 2**-53, float32 at 2**-24, and the
# differences grow over the steps as in any recurrence.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4}
# Measured differences beyond those, with their reason, instead of a looser tolerance.
# Measured on this table (20 steps): NAdam 4.9e-9, ASGD 6.5e-7 in float64, where every other
# optimizer stays below 1e-13 (RAdam and Rprop are bit-identical to torch).
KNOWN = {
    # torch keeps NAdam's mu_product and ASGD's eta and mu in the default dtype (float32) whatever
    # the params' dtype: its float64 run steps with float32-rounded scalars.
    ("NAdam", torch.float64): "torch's mu_product is float32",
    ("ASGD", torch.float64): "torch's eta and mu are float32",
}
OPTIMIZERS = [info for info in common_optimizers.optim_db if info.optim_cls.__name__ in drop_ins.DROP_INS]


def _model(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    layers = [torch.nn.Linear(5, 4, dtype=dtype), torch.nn.Linear(4, 3, bias=False, dtype=dtype)]
    with torch.no_grad():
        for p in (p for layer in layers for p in layer.parameters()):
            p.copy_(torch.randn(p.shape, generator=generator, dtype=dtype))
    return [p for layer in layers for p in layer.parameters()]


def _gradients(params, step):
    generator = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]


def _train(cls, params, kwargs, schedulers=()):
    optimizer = cls(params, **kwargs)
    made = [make(optimizer) for make in schedulers]
    for step in range(STEPS):
        for p, g in zip(params, _gradients(params, step)):
            p.grad = g
        optimizer.step()
        for scheduler in made:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(1.0)
            else:
                scheduler.step()
    return [p.detach().clone() for p in params], optimizer


def _relative(ours, theirs):
    worst = 0.0
    for a, b in zip(ours, theirs):
        scale = torch.maximum(torch.maximum(a.abs(), b.abs()), torch.tensor(1e-30, dtype=a.dtype))
        worst = max(worst, float(((a - b).abs() / scale).max()))
    return worst


def _inputs():
    cases = []
    for info in OPTIMIZERS:
        for dtype in (torch.float32, torch.float64):
            for number, entry in enumerate(info.optim_inputs_func(device="cpu", dtype=dtype)):
                cases.append(pytest.param(info, dtype, entry,
                                          id=f"{info.optim_cls.__name__}-{str(dtype)[6:]}-{number}-{entry.desc}"))
    return cases


@pytest.mark.parametrize("info, dtype, entry", _inputs())
def test_every_configuration_of_torchs_table_agrees_with_torch(info, dtype, entry):
    name = info.optim_cls.__name__
    kwargs = dict(entry.kwargs)
    ours, _ = _train(drop_ins.DROP_INS[name], _model(dtype), kwargs)
    theirs, _ = _train(info.optim_cls, _model(dtype), {**kwargs, "foreach": False}
                       if "foreach" in _accepted(info.optim_cls) and "fused" not in kwargs else kwargs)
    difference = _relative(ours, theirs)
    reason = KNOWN.get((name, dtype))
    limit = TOLERANCE[dtype] if reason is None else TOLERANCE[torch.float32]
    assert difference < limit, f"{entry.desc}: {difference:.3g}" + (f" ({reason})" if reason else "")
    moved = _relative(ours, [p.detach() for p in _model(dtype)])
    assert moved > 10 * limit or kwargs.get("lr", 1) == 0, "the params barely moved: the comparison has no teeth"


def _accepted(cls):
    import inspect

    return set(inspect.signature(cls).parameters)


def _errors():
    cases = []
    for info in OPTIMIZERS:
        for number, entry in enumerate(info.optim_error_inputs_func(device="cpu", dtype=torch.float32)):
            cases.append(pytest.param(info, entry, id=f"{info.optim_cls.__name__}-{number}"))
    return cases


@pytest.mark.parametrize("info, entry", _errors())
def test_every_error_input_of_torchs_table_raises_torchs_exception_type(info, entry):
    given = entry.optimizer_error_input
    cls = drop_ins.DROP_INS[info.optim_cls.__name__]
    params = given.params if given.params is not None else _model(torch.float32)
    if entry.error_on != common_optimizers.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        pytest.skip(f"{entry.error_on}: not a construction error (none on the CPU today)")
    if issubclass(entry.error_type, Warning):
        with pytest.warns(entry.error_type):
            cls(params, **given.kwargs)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(entry.error_type):
            cls(params, **given.kwargs)


def _schedulers():
    cases = []
    for info in OPTIMIZERS:
        for number, schedulers in enumerate(info.scheduler_inputs):
            cases.append(pytest.param(info, schedulers, id=f"{info.optim_cls.__name__}-{number}"))
    return cases


@pytest.mark.parametrize("info, schedulers", _schedulers())
def test_every_scheduler_input_drives_the_drop_in_as_it_drives_torch(info, schedulers):
    name = info.optim_cls.__name__
    dtype = torch.float64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # schedulers' own warnings, the same for both
        ours, ours_optimizer = _train(drop_ins.DROP_INS[name], _model(dtype), {}, schedulers)
        theirs, their_optimizer = _train(info.optim_cls, _model(dtype), {}, schedulers)
    limit = TOLERANCE[torch.float32] if (name, dtype) in KNOWN else TOLERANCE[dtype]
    assert _relative(ours, theirs) < limit
    ours_groups = [{k: v for k, v in g.items() if k != "params"} for g in ours_optimizer.param_groups]
    their_groups = [{k: v for k, v in g.items() if k != "params"} for g in their_optimizer.param_groups]
    for a, b in zip(ours_groups, their_groups):  # the schedulers moved the same group values
        for key in ("lr", "momentum", "betas"):
            if key in b:
                assert np.allclose(np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)), key

"""A torch user changes one import and nothing else: names, positional arguments, switches,
state dicts in both directions, copies and pickles, and O(1) host work per step."""

from __future__ import annotations

import copy
import inspect
import io
import pickle

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import portopt  # noqa: E402
import portopt.torch as drop_ins  # noqa: E402

TORCH_NAMES = ["Adam", "AdamW", "Adagrad", "RMSprop", "SGD", "NAdam", "Adadelta", "Adamax", "RAdam", "Rprop", "ASGD"]
OPTIONS = {"SGD": {"momentum": 0.9}, "RMSprop": {"momentum": 0.5, "centered": True}, "ASGD": {"t0": 3.0}}


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()


def _train(optimizer, model, steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(8, 4, generator=generator, dtype=torch.float64)).pow(2).sum().backward()
        optimizer.step()


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_every_torch_optimizer_name_is_a_drop_in_with_torchs_positional_order():
    for name in TORCH_NAMES:
        ours, theirs = inspect.signature(getattr(drop_ins, name)), inspect.signature(getattr(torch.optim, name))
        positional = [n for n, p in theirs.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert [n for n, p in ours.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD] == positional, name
        for n, p in theirs.parameters.items():  # every torch argument, with torch's default
            assert n in ours.parameters, (name, n)
            if n != "params":
                assert ours.parameters[n].default == p.default, (name, n)
        assert ours.parameters["skip_nonfinite"].kind is inspect.Parameter.KEYWORD_ONLY
    assert drop_ins.AdaGrad is drop_ins.Adagrad and drop_ins.RMSProp is drop_ins.RMSprop
    model = _model()
    drop_ins.SGD(model.parameters(), 0.1)  # lr positionally, as torch.optim.SGD(params, 0.1)
    drop_ins.Adagrad(model.parameters(), 0.1, 0.01, 0.0, 0.1, 1e-9)


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_torch_state_dict_loads_into_the_drop_in_and_the_other_way(name):
    options = OPTIONS.get(name, {})
    # torch -> drop-in: train 3 steps with torch, continue 3 with the drop-in, against 6 with torch
    reference_model = _model()
    reference = getattr(torch.optim, name)(reference_model.parameters(), **options, foreach=False)
    _train(reference, reference_model, 3)
    model = copy.deepcopy(reference_model)
    ours = getattr(drop_ins, name)(model.parameters(), **options)
    ours.load_state_dict(copy.deepcopy(reference.state_dict()))
    _train(ours, model, 3, seed=2)
    _train(reference, reference_model, 3, seed=2)
    for a, b in zip(_params(model), _params(reference_model)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9), name
    # drop-in -> torch
    theirs = getattr(torch.optim, name)(model.parameters(), **options, foreach=False)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))
    _train(theirs, model, 2, seed=3)
    _train(reference, reference_model, 2, seed=3)
    for a, b in zip(_params(model), _params(reference_model)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9), name


def test_an_older_torch_state_dict_without_newer_keys_loads():
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    _train(optimizer, model, 2)
    old = copy.deepcopy(optimizer.state_dict())
    for group in old["param_groups"]:
        for key in ("maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay"):
            group.pop(key, None)
    ours = drop_ins.Adam(model.parameters())
    ours.load_state_dict(old)
    _train(ours, model, 2)
    assert ours.param_groups[0]["maximize"] is False and ours.param_groups[0]["skip_nonfinite"] is False


@pytest.mark.parametrize("name", [*TORCH_NAMES, "AMSGrad", "Lion", "AdaBound", "SignSGD"])
def test_deepcopy_pickle_and_torch_save_of_a_drop_in_keep_working(name):
    model = _model()
    optimizer = getattr(drop_ins, name)(model.parameters(), skip_nonfinite=True)
    _train(optimizer, model, 2)
    copies = [copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))]
    buffer = io.BytesIO()
    torch.save(optimizer, buffer)
    buffer.seek(0)
    copies.append(torch.load(buffer, weights_only=False))
    for other in copies:
        assert other.skipped_steps == 0 and other.skip_group is None
        params = [p for group in other.param_groups for p in group["params"]]
        for p in params:
            p.grad = torch.ones_like(p)
        other.step()


def test_tensor_lr_and_betas_and_torchs_switches():
    model = _model()
    ours = drop_ins.Adam(model.parameters(), lr=torch.tensor(0.01), betas=(torch.tensor(0.8), torch.tensor(0.9)))
    theirs_model = copy.deepcopy(model)
    theirs = torch.optim.Adam(theirs_model.parameters(), lr=torch.tensor(0.01),
                              betas=(torch.tensor(0.8), torch.tensor(0.9)), foreach=False)
    _train(ours, model, 3)
    _train(theirs, theirs_model, 3)
    assert all(torch.allclose(a, b, rtol=1e-10) for a, b in zip(_params(model), _params(theirs_model)))
    kept = drop_ins.Adam(model.parameters(), foreach=True, fused=False)
    assert kept.param_groups[0]["foreach"] is True and kept.param_groups[0]["fused"] is False
    with pytest.raises(ValueError, match="capturable=True"):
        drop_ins.Adam(model.parameters(), capturable=True)
    with pytest.raises(ValueError, match="differentiable=True"):
        drop_ins.SGD(model.parameters(), 0.1, differentiable=True)
    decoupled = drop_ins.Adam(model.parameters(), weight_decay=0.1, decoupled_weight_decay=True)
    _train(decoupled, model, 1)


def test_nadam_tracks_a_changing_beta1_as_torch_does():
    """OneCycleLR with cycle_momentum moves beta1 every step; torch multiplies each step's mu
    into mu_product, and so does the drop-in (and the functional API through its state)."""
    def run(cls, model):
        optimizer = cls(model.parameters(), lr=0.01, **({"foreach": False} if cls is torch.optim.NAdam else {}))
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=40, cycle_momentum=True)
        for _ in range(40):
            _train(optimizer, model, 1)
            scheduler.step()
        return _params(model)

    torch.set_default_dtype(torch.float64)  # torch keeps mu_product in the default dtype
    try:
        ours, theirs = run(drop_ins.NAdam, _model()), run(torch.optim.NAdam, _model())
    finally:
        torch.set_default_dtype(torch.float32)
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("name", sorted(portopt.RULES))
def test_host_work_per_step_does_not_grow_with_the_step_count(name, monkeypatch):
    """Count the host arithmetic (double-double products, decimal powers) of 64 steps from step
    100 000 and from step 10 000 000: the same per step, a few at most (nothing recomputed from
    step 1, as NAdam's Πμ once was; powers come from the ones of the steps before)."""
    import numpy as np

    from portopt import host_arithmetic

    calls = {"n": 0}
    for function in ("_multiply", "real_power"):
        original = getattr(host_arithmetic, function)

        def counting(*args, original=original):
            calls["n"] += 1
            return original(*args)

        monkeypatch.setattr(host_arithmetic, function, counting)
    import portopt.rules.asgd as asgd_module
    import portopt.rules.nadam as nadam_module

    monkeypatch.setattr(nadam_module, "real_power", host_arithmetic.real_power)
    monkeypatch.setattr(asgd_module, "real_power", host_arithmetic.real_power)
    rule = portopt.RULES[name]()
    per_step = []
    for start in (100_000, 10_000_000):
        params = {"w": np.ones(3)}
        state = rule.init(params)
        state.step = start
        rule.step(params, {"w": np.full(3, 0.1)}, state)
        calls["n"] = 0
        for _ in range(64):
            rule.step(params, {"w": np.full(3, 0.1)}, state)
        per_step.append(calls["n"] / 64)
    assert per_step[0] <= 8 and per_step[1] <= per_step[0] + 1, per_step

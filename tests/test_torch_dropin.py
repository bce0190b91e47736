"""The torch.optim drop-ins: same bits as the functional API, and torch.optim's contract."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import portopt
from helpers import VARIANTS, make_rule, variant_id
from portopt.conformance.cases import has_torch_equivalent

torch = pytest.importorskip("torch", reason="torch is not installed")
import portopt.torch as pt  # noqa: E402


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(dtype)


def _batch(step, dtype=torch.float32):
    generator = torch.Generator().manual_seed(step)
    return torch.randn(8, 6, generator=generator).to(dtype), torch.randn(8, 1, generator=generator).to(dtype)


def _train(model, optimizer, steps, start=0, scheduler=None):
    for step in range(start, start + steps):
        x, y = _batch(step, next(model.parameters()).dtype)
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).float().mean()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def _plain_options(variant):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in variant["options"].items()}


@pytest.mark.parametrize("variant", [v for v in VARIANTS
                                     if not isinstance(v["options"].get("lr"), dict) and "clip_norm" not in v
                                     and has_torch_equivalent(v)
                                     and v["rule"] in pt.__all__],
                         ids=variant_id)
def test_drop_in_equals_functional_api_on_numpy(variant):
    model = _model()
    numpy_params = [p.detach().numpy().copy() for p in model.parameters()]
    optimizer = getattr(pt, variant["rule"])(model.parameters(), **_plain_options(variant))
    rule = make_rule(variant)
    state = rule.init(numpy_params)
    for step in range(15):
        x, y = _batch(step)
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        grads = [p.grad.numpy().copy() for p in model.parameters()]
        # the numpy run applies the torch gradients to its own copies of the weights
        optimizer.step()
        rule.step(numpy_params, grads, state)
        # both runs must continue from identical weights for the gradients to stay shared
        for p, q in zip(model.parameters(), numpy_params):
            assert p.detach().numpy().tobytes() == q.tobytes()
    for p in model.parameters():
        for slot in rule.slot_names():
            assert optimizer.state[p][slot].dtype == p.dtype
        assert optimizer.state[p]["step"] == 15


def test_param_groups_use_their_own_hyperparameters():
    model = _model()
    reference = copy.deepcopy(model)
    first, second = list(model[0].parameters()), list(model[2].parameters())
    optimizer = pt.Adam([{"params": first}, {"params": second, "lr": 0.1, "weight_decay": 0.01}], lr=0.001)
    _train(model, optimizer, 3)
    # Same thing by hand, group by group, with the functional rules.
    rules = [portopt.Adam(lr=0.001), portopt.Adam(lr=0.1, weight_decay=0.01)]
    groups = [list(reference[0].parameters()), list(reference[2].parameters())]
    states = [rule.init([p.detach() for p in g]) for rule, g in zip(rules, groups)]
    for step in range(3):
        x, y = _batch(step)
        reference.zero_grad()
        ((reference(x) - y) ** 2).float().mean().backward()
        for rule, group, state in zip(rules, groups, states):
            rule.step([p.detach() for p in group], [p.grad for p in group], state)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)


def test_state_dict_round_trip_resumes_bit_exact():
    straight = _model()
    optimizer = pt.RMSProp(straight.parameters(), lr=0.01, momentum=0.9, centered=True)
    _train(straight, optimizer, 10)

    resumed = _model()
    first = pt.RMSProp(resumed.parameters(), lr=0.01, momentum=0.9, centered=True)
    _train(resumed, first, 4)
    saved = copy.deepcopy(first.state_dict())
    second = pt.RMSProp(resumed.parameters(), lr=0.5)  # hyperparameters come back from the state dict
    second.load_state_dict(saved)
    assert second.param_groups[0]["lr"] == 0.01
    _train(resumed, second, 6, start=4)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_load_state_dict_keeps_float32_state_of_float16_params():
    model = _model(torch.float16)
    optimizer = pt.AdamW(model.parameters(), lr=0.01)
    _train(model, optimizer, 3)
    saved = copy.deepcopy(optimizer.state_dict())
    again = pt.AdamW(model.parameters(), lr=0.01)
    again.load_state_dict(saved)
    for p in model.parameters():
        assert again.state[p]["exp_avg"].dtype == torch.float32
        assert torch.equal(again.state[p]["exp_avg"], optimizer.state[p]["exp_avg"])


def test_lr_scheduler_changes_are_seen():
    scheduled, manual = _model(), _model()
    optimizer = pt.AdaGrad(scheduled.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    _train(scheduled, optimizer, 5, scheduler=scheduler)
    rule = portopt.AdaGrad(lr=lambda t: 0.1 * 0.5 ** (t // 2))
    params = [p.detach() for p in manual.parameters()]
    state = rule.init(params)
    for step in range(5):
        x, y = _batch(step)
        manual.zero_grad()
        ((manual(x) - y) ** 2).float().mean().backward()
        rule.step(params, [p.grad for p in manual.parameters()], state)
    for p, q in zip(scheduled.parameters(), manual.parameters()):
        assert torch.equal(p, q)


def test_params_without_grad_are_left_alone_and_closure_is_called():
    model = _model()
    frozen = model[0].weight.detach().clone()
    model[0].weight.requires_grad_(False)
    optimizer = pt.Adam(model.parameters(), lr=0.1)
    x, y = _batch(0)

    def closure():
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert torch.is_tensor(loss) and loss.item() > 0
    assert torch.equal(model[0].weight, frozen)
    assert model[0].weight not in optimizer.state


def test_drop_in_validates_as_torch_then_as_the_rule():
    """A drop-in of a torch class raises torch's error for what torch refuses; a portopt-only
    drop-in, and what portopt refuses beyond torch, the rule's."""
    with pytest.raises(ValueError, match=r"Invalid learning rate: -1.0"):
        pt.Adam(_model().parameters(), lr=-1.0)
    with pytest.raises(ValueError, match=r"Invalid beta parameter at index 0"):
        pt.AdamW(_model().parameters(), betas=(1.0, 0.9))
    with pytest.raises(ValueError, match=r"lr must be >= 0"):
        pt.Lion(_model().parameters(), lr=-1.0)
    with pytest.raises(ValueError, match=r"lr must be finite"):
        pt.SGD(_model().parameters(), lr=float("inf"))


def test_drop_in_is_a_torch_optimizer_with_torch_state_keys():
    model = _model()
    optimizer = pt.AMSGrad(model.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    _train(model, optimizer, 1)
    keys = set(optimizer.state[next(model.parameters())])
    assert keys == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert isinstance(np.asarray(optimizer.state_dict()["state"][0]["exp_avg"]), np.ndarray)


GRADIENTS = (1.0, 1.0, 1e-3, 1e-3)  # falling: v falls from step 3, so AMSGrad's max differs from v


@pytest.mark.parametrize("edit", ["betas replaced", "betas list edited in place", "amsgrad switched on"])
def test_a_group_hyperparameter_edited_between_steps_takes_effect(edit):
    """The drop-in keeps a group's rule while the group's values are the same objects: an edit
    of any kind, even inside a list it holds, gives the steps a fresh optimizer with those
    values would take."""
    import portopt.torch as pt
    import torch

    def run(edited_from_the_start: bool) -> bytes:
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
        optimizer = pt.Adam([param], lr=0.01, betas=[0.9, 0.999] if "list" in edit else (0.9, 0.999))
        group = optimizer.param_groups[0]
        for k in range(4):
            if k == 2 or edited_from_the_start:
                if edit == "betas replaced":
                    group["betas"] = (0.5, 0.9)
                elif edit == "betas list edited in place":
                    group["betas"][0], group["betas"][1] = 0.5, 0.9
                else:
                    group["amsgrad"] = True
            param.grad = torch.full((6,), GRADIENTS[k], dtype=torch.float64)
            optimizer.step()
        return param.detach().numpy().tobytes()

    torch.manual_seed(0)
    reference = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    first, later = pt.Adam([reference], lr=0.01), None
    for k in range(4):
        if k == 2:  # the same two steps, then an optimizer taking the edited values with its state
            state = first.state_dict()
            state["param_groups"][0].update({"betas": (0.5, 0.9) if "betas" in edit else (0.9, 0.999),
                                             "amsgrad": edit == "amsgrad switched on"})
            if edit == "amsgrad switched on":
                state["state"][0]["max_exp_avg_sq"] = torch.zeros(6, dtype=torch.float64)
            later = pt.Adam([reference], lr=0.01)
            later.load_state_dict(state)
        reference.grad = torch.full((6,), GRADIENTS[k], dtype=torch.float64)
        (later or first).step()
    assert run(False) == reference.detach().numpy().tobytes()
    assert run(False) != run(True)  # the edit changed the steps


@pytest.mark.parametrize(("name", "before", "after"), [
    ("betas", (0.0, 0.999), (-0.0, 0.999)),  # equal as numbers, not as steps: -0.0 * m is -0.0
    ("eps_hat", False, 0),                   # equal as numbers, but not a bool
    ("bias_correction", True, 1.0),
])
def test_a_group_edit_equal_only_as_a_number_is_not_taken_for_the_old_value(name, before, after):
    """The cached rule is kept only for the same values of the same types, zeros of the same
    sign: -0.0 for 0.0 steps as a fresh optimizer would, and 0 for False is refused naming it."""
    import portopt.torch as pt
    import torch

    param = torch.nn.Parameter(torch.full((3,), -0.0, dtype=torch.float64))
    optimizer = pt.Adam([param], lr=0.01, **{name: before})
    param.grad = torch.full((3,), -0.0, dtype=torch.float64)
    optimizer.step()
    optimizer.param_groups[0][name] = after
    if isinstance(after, tuple):
        fresh_param = torch.nn.Parameter(param.detach().clone())
        fresh = pt.Adam([fresh_param], lr=0.01, **{name: after})
        fresh.load_state_dict(optimizer.state_dict())
        for p in (param, fresh_param):
            p.grad = torch.full((3,), -0.0, dtype=torch.float64)
        optimizer.step()
        fresh.step()
        assert param.detach().numpy().tobytes() == fresh_param.detach().numpy().tobytes()
        assert (optimizer.state[param]["exp_avg"].numpy().tobytes()
                == fresh.state[fresh_param]["exp_avg"].numpy().tobytes())
    else:
        with pytest.raises(TypeError, match=f"{name} must be a bool"):
            optimizer.step()


def test_portopts_own_forms_are_not_converted_from_tensors():
    import portopt.torch as pt
    import torch

    with pytest.raises(TypeError, match="eps_hat must be a bool"):
        pt.Adam([torch.nn.Parameter(torch.zeros(2))], eps_hat=torch.tensor(True))


def test_host_state_resumes_exactly_through_state_dict():
    """NAdam's Πμ (a float on the host) goes into the state dict as a float64 tensor, so a run
    resumed from it continues with the same value (a float32 tensor lost bits; found by an
    independent attacker)."""
    import portopt.torch as pt

    weight = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 7, dtype=torch.float64))
    optimizer = pt.NAdam([weight], lr=1e-2)
    for _ in range(5):
        weight.grad = torch.cos(weight.detach() * 3)
        optimizer.step()
    saved = optimizer.state_dict()
    resumed_weight = torch.nn.Parameter(weight.detach().clone())
    resumed = pt.NAdam([resumed_weight], lr=1e-2)
    resumed.load_state_dict(saved)
    assert float(resumed.state[resumed_weight]["mu_product"]) == float(optimizer.state[weight]["mu_product"])
    for p, opt in ((weight, optimizer), (resumed_weight, resumed)):
        for _ in range(3):
            p.grad = torch.cos(p.detach() * 3)
            opt.step()
    assert torch.equal(weight, resumed_weight)
    assert float(resumed.state[resumed_weight]["mu_product"]) == float(optimizer.state[weight]["mu_product"])

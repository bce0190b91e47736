"""The drop-in's repeated step (portopt.torch_repeat) never lets a change through: after warm
steps, each edit a training loop or a user can make to the groups, the params, the gradients
or the state gives the bits, or the error, of a drop-in that takes the full step every time."""

from __future__ import annotations

import pytest

from conftest import TARGETS

pytestmark = pytest.mark.skipif("torch-cpu" not in TARGETS, reason="torch is not installed")


def _model(torch):
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float32))
            for shape in ((5, 3), (3,), (7,))]


def _grads(torch, params, step):
    generator = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)


def _torch():
    import torch

    return torch


def _set_lr(opt, params):
    opt.param_groups[0]["lr"] = 0.05


def _set_betas(opt, params):
    opt.param_groups[0]["betas"] = (0.5, 0.75)


def _replace_slot(opt, params):
    opt.state[params[0]]["exp_avg"] = opt.state[params[0]]["exp_avg"].clone() + 1.0


def _fill_slot(opt, params):
    opt.state[params[1]]["exp_avg_sq"].fill_(2.0)


def _set_step(opt, params):
    opt.state[params[2]]["step"] = 40


def _step_as_tensor(opt, params):
    for p in params:
        opt.state[p]["step"] = _torch().tensor(float(opt.state[p]["step"]))


def _reset_state(opt, params):
    opt.state[params[1]] = {}


def _move_param(opt, params):
    with _torch().no_grad():
        params[0].set_(params[0].detach().clone() * 2)


def _move_slot(opt, params):
    slot = opt.state[params[2]]["exp_avg"]
    slot.set_(slot.clone() - 1.0)


def _grad_none(opt, params):
    params[1].grad = None


def _grad_other_dtype(opt, params):
    if hasattr(params[0], "grad_dtype"):
        params[0].grad_dtype = None  # torch >= 2.10 refuses another dtype unless told
    params[0].grad = params[0].grad.double()


def _grad_other_shape(opt, params):
    params[2].grad.resize_(3)  # the same object, another shape


def _grad_is_param(opt, params):
    params[1].grad = params[1].detach()


def _grad_is_slot(opt, params):
    params[2].grad = opt.state[params[2]]["exp_avg_sq"]


def _append_param(opt, params):
    extra = _torch().nn.Parameter(_torch().ones(4))
    extra.grad = _torch().full((4,), 0.5)
    opt.param_groups[0]["params"].append(extra)
    params.append(extra)


def _add_group(opt, params):
    extra = _torch().nn.Parameter(_torch().ones(2))
    extra.grad = _torch().full((2,), 0.25)
    opt.add_param_group({"params": [extra], "lr": 0.2})
    params.append(extra)


def _param_twice(opt, params):
    opt.param_groups[0]["params"][2] = opt.param_groups[0]["params"][0]


def _slot_shared(opt, params):
    opt.state[params[1]]["exp_avg"] = opt.state[params[1]]["exp_avg_sq"]


def _group_replaced(opt, params):
    opt.param_groups[0] = {**opt.param_groups[0], "lr": 0.3}


def _maximize(opt, params):
    opt.param_groups[0]["maximize"] = True


def _state_replaced(opt, params):
    opt.state = type(opt.state)(dict, {p: dict(opt.state[p]) for p in params})


def _grad_nonfinite_in_place(opt, params):
    params[0].grad[0, 0] = float("nan")


CHANGES = {name[1:]: change for name, change in list(globals().items()) if name.startswith("_")
           and callable(change) and change.__code__.co_varnames[:2] == ("opt", "params")}


def _outcome(opt, params, change, torch, full):
    """Three warm steps, the change, two more steps; ``full``: the full step every time."""
    for step in range(3):
        _grads(torch, params, step)
        if full:
            opt.__dict__.pop("_repeat_lane", None)
        opt.step()
    if not full:
        assert opt.__dict__.get("_repeat_lane") is not None, "the warm steps did not make a lane"
    _grads(torch, params, 3)
    change(opt, params)
    results = []
    for step in (3, 4):  # the change's step, then one with fresh gradients
        if step == 4:
            _grads(torch, params, step)
        if full:
            opt.__dict__.pop("_repeat_lane", None)
        try:
            opt.step()
            results.append("ok")
        except Exception as error:  # noqa: BLE001 - compared with the full step's
            results.append(f"{type(error).__name__}: {error}")
            break
    arrays = [p.detach().clone() for p in params]
    arrays += [value.clone() for p in params for value in opt.state[p].values() if isinstance(value, torch.Tensor)]
    steps = [opt.state[p].get("step") for p in params]
    return results, arrays, [float(s) if s is not None else None for s in steps]


@pytest.mark.parametrize("rule", ["Adam", "AdamW", "NAdam", "SGD"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_after_warm_steps_gives_the_full_steps_bits_or_error(change, rule):
    torch = _torch()
    import portopt.torch as drop_ins

    kwargs = {"lr": 0.1, "momentum": 0.9} if rule == "SGD" else {"lr": 0.1}
    if change == "set_betas" and rule == "SGD":
        pytest.skip("SGD has no betas")
    if change in ("replace_slot", "fill_slot", "move_slot", "slot_shared", "grad_is_slot") and rule == "SGD":
        pytest.skip("SGD's state is its momentum buffer only")
    outcomes = []
    for full in (False, True):
        params = _model(torch)
        opt = getattr(drop_ins, rule)(params, **kwargs)
        outcomes.append(_outcome(opt, params, CHANGES[change], torch, full))
    (results, arrays, steps), (expected_results, expected_arrays, expected_steps) = outcomes
    assert results == expected_results
    assert steps == expected_steps
    assert len(arrays) == len(expected_arrays)
    for got, expected in zip(arrays, expected_arrays):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got.view(-1).view(torch.int32) if got.dtype == torch.float32 else got,
                           expected.view(-1).view(torch.int32) if expected.dtype == torch.float32 else expected)


def test_the_lane_is_taken_and_matches_the_full_step_over_many_steps():
    """With nothing changed, steps after the first take the lane and keep the full step's bits."""
    torch = _torch()
    import portopt.torch as drop_ins

    runs = []
    for full in (False, True):
        params = _model(torch)
        opt = drop_ins.Adam(params, lr=0.01, weight_decay=0.1)
        taken = 0
        for step in range(20):
            _grads(torch, params, step)
            if full:
                opt.__dict__.pop("_repeat_lane", None)
            lane = opt.__dict__.get("_repeat_lane")
            opt.step()
            taken += lane is not None and opt.__dict__.get("_repeat_lane") is lane
        runs.append(([p.detach().clone() for p in params], taken))
    (arrays, taken), (expected, _) = runs
    assert taken == 19
    assert all(torch.equal(a, b) for a, b in zip(arrays, expected))


# --- user code inside a step: schedules run before any check they could undo --------------------
def _bits(t):
    return t.detach().view(_torch().int32).clone() if t.dtype == _torch().float32 else t.detach().clone()


@pytest.mark.parametrize("what", ["param", "grad", "other group's param"])
@pytest.mark.parametrize("full", [False, True])
def test_a_schedule_that_moves_an_array_has_the_new_memory_stepped(what, full):
    """A group's lr is a callable (user code) that moves a param or a gradient when step 2's
    scalars are evaluated: the step writes (and reads) the memory it moved to, lane or not, and
    leaves the memory it left alone — the schedules of every group run before any check."""
    torch = _torch()
    import portopt.torch as drop_ins

    torch.manual_seed(0)
    a, b = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    left = []

    def moving_lr(step):
        if step == 2 and not left:
            target = a if what != "grad" else a.grad
            left.append(target.data)
            if what == "grad":
                a.grad.set_(torch.full((8,), 0.75))  # new memory, other values: read those
            else:
                a.data = a.data.clone()
        return 0.1

    groups = [{"params": [a]}, {"params": [b], "lr": moving_lr}] if what == "other group's param" else \
        [{"params": [a], "lr": moving_lr}, {"params": [b]}]
    opt = drop_ins.Adam(groups, lr=0.1)
    history = []
    for _ in range(3):
        a.grad, b.grad = torch.full((8,), 0.5), torch.full((8,), 0.25)
        if full:
            opt.__dict__.pop("_repeat_lane", None)
        history.append(_bits(a))
        opt.step()
    assert left, "the schedule did not run"
    old = left[0]
    if what == "grad":
        assert torch.equal(old, torch.full((8,), 0.5))
    else:
        assert torch.equal(_bits(old), history[2]), "the memory the param left was written"
        assert not torch.equal(_bits(a), history[2]), "the param's new memory was not stepped"
    reference = drop_ins.Adam([torch.nn.Parameter(history[0].view(torch.float32).clone())], lr=0.1)
    for k in range(3):
        reference.param_groups[0]["params"][0].grad = torch.full((8,), 0.75 if what == "grad" and k == 2 else 0.5)
        reference.step()
    assert torch.equal(_bits(a), _bits(reference.param_groups[0]["params"][0]))


def test_a_schedule_that_moves_a_tensor_under_portopts_own_step():
    """The same on ``portopt.Adam(lr=schedule).step`` over torch tensors (the repeated step)."""
    torch = _torch()
    import portopt

    p, g = torch.randn(8, generator=torch.Generator().manual_seed(1)), torch.full((8,), 0.5)
    left = []

    def lr(step):
        if step == 2:
            left.append(p.data)
            p.set_(p.clone())
        return 0.1

    rule = portopt.Adam(lr=lr)
    state = rule.init(p)
    expected, expected_state = p.clone(), rule.init(p)
    for _ in range(3):
        before = p.clone()
        rule.step(p, g, state)
        expected, expected_state = portopt.Adam(lr=0.1).update(expected, g, expected_state)
    assert torch.equal(left[0], before) and torch.equal(p, expected)


def test_no_schedule_runs_twice_in_one_step_when_the_lane_falls_through():
    """A lane that finds a later group changed leaves the scalars it evaluated to the full step."""
    torch = _torch()
    import portopt.torch as drop_ins

    outcomes = []
    for full in (False, True):
        a, b = torch.ones(4, requires_grad=True), torch.ones(4, requires_grad=True)
        calls = []

        def lr(step, calls=calls):
            calls.append(step)
            return 0.1 * len(calls)

        opt = drop_ins.SGD([{"params": [a], "lr": lr}, {"params": [b]}], lr=0.1)
        for k in range(4):
            a.grad, b.grad = torch.ones(4), (None if k == 2 else torch.ones(4))
            if full:
                opt.__dict__.pop("_repeat_lane", None)
            opt.step()
        outcomes.append((calls, _bits(a)))
    assert outcomes[0][0] == outcomes[1][0] == [0, 1, 2, 3]
    assert torch.equal(outcomes[0][1], outcomes[1][1])


def test_asgd_does_not_evaluate_its_lr_at_step_zero_on_later_steps():
    """ASGD's host state names come without evaluating lr: a schedule valid from step 1 on works
    in the full step as in the lane."""
    torch = _torch()
    import portopt.torch as drop_ins

    results = []
    for full in (False, True):
        p = torch.ones(3, requires_grad=True)
        opt = drop_ins.ASGD([p], lr=0.01)
        for k in range(4):
            p.grad = torch.ones(3)
            if k == 2:
                opt.param_groups[0]["lr"] = lambda s: -1.0 if s == 0 else 0.01
            if full:
                opt.__dict__.pop("_repeat_lane", None)
            opt.step()
        results.append(_bits(p))
    assert torch.equal(*results)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_a_gradient_that_is_a_view_of_its_param_is_read_as_update_reads_it(dtype):
    """bfloat16 too (NumPy has no bfloat16, so the exact sharing check reads its bit patterns)."""
    torch = _torch()
    import portopt.torch as drop_ins

    p = torch.nn.Parameter(torch.linspace(-1, 1, 6, dtype=getattr(torch, dtype)))
    q = torch.nn.Parameter(p.detach().clone())
    aliased, separate = drop_ins.Adam([p], lr=0.1), drop_ins.Adam([q], lr=0.1)
    for _ in range(3):
        p.grad = p.data[:]
        q.grad = q.detach().clone()
        aliased.step()
        separate.step()
    assert torch.equal(p.detach().view(torch.int16) if dtype != "float32" else p.detach(),
                       q.detach().view(torch.int16) if dtype != "float32" else q.detach())


@pytest.mark.parametrize("grad_mode", ["enabled", "no_grad"])
def test_the_repeated_step_leaves_autograd_alone_in_either_grad_mode(grad_mode):
    """The lane runs without ``no_grad`` (its loop writes through addresses): stepped in grad
    mode, params that require grad stay leaves without a ``grad_fn``, and the bits are those of
    a run under ``no_grad``."""
    torch = _torch()
    import portopt.torch as drop_ins

    results = []
    for mode in (grad_mode, "no_grad"):
        params = _model(torch)
        opt = drop_ins.Adam(params, lr=0.1)
        context = torch.enable_grad() if mode == "enabled" else torch.no_grad()
        for step in range(4):
            _grads(torch, params, step)
            with context:
                opt.step()
            assert "_repeat_lane" in opt.__dict__
        for p in params:
            assert p.is_leaf and p.grad_fn is None and p.requires_grad
        results.append([p.detach().clone() for p in params])
    assert all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(*results))

"""torch.optim drop-ins: ``from portopt.torch import Adam`` and the loop stays as it was.

Each class is a ``torch.optim.Optimizer`` whose step runs the portopt rule of the same
name, so a torch model gets the bits NumPy would compute. Param groups, ``.grad``,
``zero_grad``, ``state_dict``/``load_state_dict`` and LR schedulers that edit
``group['lr']`` work as with torch.optim. State keys are torch.optim's (``exp_avg``, ...)
plus ``step`` (an int). For float16/bfloat16 params the state is float32.

Under torch.distributed they work unchanged: with FSDP2 (DTensor params) each rank steps
its local shard, with no communication, and keeps its state as DTensors of the same layout
(so torch.distributed.checkpoint saves and loads it); as ``optimizer_class`` of
``ZeroRedundancyOptimizer`` each rank steps the whole tensors it owns. The only collective
is the skip decision of ``skip_nonfinite=True`` under FSDP2 (all ranks skip together).
:func:`clip_grad_norm_` clips by the same global norm, sharded or not.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

import torch
from portopt.backends import adapter_for

from . import rules, torch_sharding
from .checks import check_params
from .clipping import clip_factor, norm_dtype, scale_by
from .fast.norms import sum_of_squares
from .hyperparams import check_real
from .optimizer import Rule
from .plan import interrupts_deferred
from .reductions import combine_frontiers, pairwise_frontier, pairwise_sum
from .state import State

__all__ = ["Adam", "AdamW", "AMSGrad", "AdaGrad", "RMSProp", "SGD", "NAdam", "AdaDelta", "Adamax", "Lion",
           "AdaBound", "SignSGD", "global_grad_norm", "clip_grad_norm_"]


def _host_value(value: Any) -> Any:
    """Group values as the rule takes them: a 0-d tensor lr becomes a float."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, list):
        return tuple(_host_value(v) for v in value)
    return value


# Hyperparameters a rule accepts as schedules: the drop-ins read them from the group at every
# step (LR schedulers edit group['lr'] between steps), so the group's rule need not be rebuilt.
_SCHEDULABLE = ("lr", "eps", "weight_decay")


class _GroupValue:
    """The current ``group[name]`` as a schedule (a callable of the steps taken); a schedule
    put in the group is evaluated."""

    __slots__ = ("group", "name")

    def __init__(self, group: dict, name: str) -> None:
        self.group, self.name = group, name

    def __call__(self, steps_taken: int) -> Any:
        value = _host_value(self.group[self.name])
        return value(steps_taken) if callable(value) else value


class PortoptOptimizer(torch.optim.Optimizer):
    """A torch.optim.Optimizer running ``rule_class`` on each param group."""

    rule_class: type[Rule]
    hyperparameter_names: tuple[str, ...]  # the rule's constructor arguments

    def __init__(self, params: Iterable[Any], skip_group: Any = None, **hyperparameters: Any) -> None:
        """``skip_group``: the ranks that must skip together under ``skip_nonfinite=True``
        where the optimizer cannot see them: ``"world"`` (every rank; picklable, so ZeRO's
        state dict, which keeps it in its param groups, still saves) or a process group.
        Under ZeRO pass ``skip_group="world"``; FSDP2's DTensors bring their own group."""
        if skip_group is not None and skip_group != "world" and not _is_process_group(skip_group):
            raise TypeError(f"skip_group must be 'world' or a torch.distributed ProcessGroup, got {skip_group!r}")
        defaults = self.rule_class(**hyperparameters).hyperparameters()
        super().__init__(params, defaults)
        self.skip_group = skip_group
        self.skipped_steps = 0  # steps skipped for non-finite gradients (skip_nonfinite=True)

    def _group_rule(self, group: dict) -> Rule:
        """The group's rule: kept while the group's other hyperparameters stay the same (its
        checked step plans with it); ``lr``, ``eps`` and ``weight_decay`` are read at each step."""
        names = self.hyperparameter_names
        fixed = tuple((name, _host_value(group[name])) for name in names if name not in _SCHEDULABLE)
        cache = self.__dict__.setdefault("_rules", {})
        cached = cache.get(id(group))
        if cached is not None and cached[0] is group and cached[1] == fixed:
            return cached[2]
        values = {name: _host_value(group[name]) for name in names}
        self.rule_class(**values)  # the group's values checked as numbers, with the usual messages
        rule = self.rule_class(**{**dict(fixed), **{name: _GroupValue(group, name) for name in names
                                                      if name in _SCHEDULABLE}})
        cache[id(group)] = (group, fixed, rule)
        return rule

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter with a ``.grad``; all groups are checked first."""
        if self.__dict__.get("_torn"):
            raise RuntimeError(f"{type(self).__name__}: an earlier step was stopped while writing, so the params and "
                               "state may hold part of it; load a checkpoint (load_state_dict) before stepping again")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        new_states: dict[torch.Tensor, dict] = {}
        plans = []
        stepped = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        for group in self.param_groups:
            rule = self._group_rule(group)
            by_steps: dict[int, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError(f"{type(self).__name__} does not support sparse gradients")
                if not self.state.get(p):
                    initial = rule.init(torch_sharding.local(p))
                    new_states[p] = {"step": 0, **{k: torch_sharding.like(v, p) for k, v in initial.slots.items()},
                                     **initial.host}
                by_steps.setdefault(self._param_state(p, new_states)["step"], []).append(p)
            host_names = tuple(rule.initial_host_state())
            for steps_taken, params in by_steps.items():
                slots = {name: [torch_sharding.local(self._param_state(p, new_states)[name]) for p in params]
                         for name in rule.slot_names()}
                first = self._param_state(params[0], new_states)  # NAdam's Πμ: one per parameter, as torch
                host = rule.restore_host_state(steps_taken, {name: float(first[name]) for name in host_names
                                                             if name in first})
                group_state = State(rule=rule.name, step=steps_taken, slots=slots, host=host)
                local_params = [torch_sharding.local(p) for p in params]
                local_grads = [torch_sharding.local(p.grad) for p in params]
                plans.append((params, rule.plan_step(local_params, local_grads, group_state)))
        skip = any(plan.skip for _, plan in plans)
        agreeing = torch_sharding.group_of(stepped) or torch_sharding.world_if_named(self.skip_group)
        if agreeing is not None and any(group.get("skip_nonfinite") for group in self.param_groups):
            device = torch_sharding.local(stepped[0]).device if stepped else torch.device("cpu")
            skip = torch_sharding.any_across(skip, agreeing, device)
        if skip:
            # skip_nonfinite: a non-finite gradient anywhere skips the whole step, every group.
            self.skipped_steps += 1
            return loss
        for p, fresh in new_states.items():
            self.state[p] = fresh
        with interrupts_deferred(len(plans) > 1):
            for number, (params, plan) in enumerate(plans):
                try:
                    plan.apply()
                except BaseException:
                    if number or plan.state.torn:  # an earlier group (or part of this one) was written
                        self.__dict__["_torn"] = True
                    raise
                for p in params:
                    self.state[p]["step"] = plan.state.step
                    self.state[p].update(plan.state.host)
        return loss

    def _param_state(self, p: torch.Tensor, new_states: dict) -> dict:
        return new_states[p] if p in new_states else self.state[p]

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch.optim, but float32 state of float16/bfloat16 params stays float32."""
        saved = copy.deepcopy(state_dict)
        super().load_state_dict(state_dict)
        saved_ids = [i for group in saved["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, p in zip(saved_ids, params):
            for key, value in saved["state"].get(saved_id, {}).items():
                if isinstance(value, torch.Tensor):
                    self.state[p][key] = value.to(device=p.device)


def global_grad_norm(parameters: Iterable[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """:func:`portopt.global_norm` of the ``.grad`` of ``parameters``, sharded or not.

    Plain tensors are whole on every rank (DDP, ZeRO) and need no communication. For FSDP2's
    DTensors each rank computes the nodes of the fixed pairwise tree that lie in its shard
    and the ranks exchange those (O(log n) numbers per tensor), so the norm has the bits of
    the unsharded :func:`portopt.global_norm` on every rank, for even and uneven shards.
    """
    grads = _grads_of(parameters)
    if not grads:
        raise ValueError("parameters have no gradients; their norm is undefined")
    locals_ = [torch_sharding.local(g) for g in grads]
    xp = check_params(locals_).xp
    dtype = norm_dtype(xp, locals_)
    if not any(torch_sharding.is_sharded(g) for g in grads):  # whole tensors: no frontiers to exchange
        total = sum_of_squares(xp, locals_, dtype)
        return adapter_for(xp).rule_namespace(total.device).sqrt(total)
    frontiers = []  # per tensor: the frontier of every rank holding part of it
    for index, (g, g_local) in enumerate(zip(grads, locals_)):
        offset, total = torch_sharding.flat_range(g, f"parameters[{index}].grad")
        squares = xp.reshape(xp.astype(g_local, dtype), (-1,))
        frontiers.append((total, [pairwise_frontier(xp, squares * squares, offset, total)]))
    group = torch_sharding.group_of(grads, "gradients")
    if group is not None:
        sharded = [i for i, g in enumerate(grads) if torch_sharding.is_sharded(g)]
        everyone = torch_sharding.gather_across([frontiers[i][1][0] for i in sharded], group)
        for position, i in enumerate(sharded):
            frontiers[i] = (frontiers[i][0], [rank[position] for rank in everyone])
    host_dtype = _numpy_dtype(dtype)
    sums = [np.asarray([combine_frontiers(parts, total, host_dtype)]) for total, parts in frontiers]
    import array_api_compat.numpy as host

    norm = np.sqrt(np.asarray(pairwise_sum(host, sums, host_dtype)))
    return torch.from_numpy(np.array(norm)).to(locals_[0].device)


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float,
                    eps: float = 1e-6) -> torch.Tensor:
    """Scale the ``.grad`` of ``parameters`` in place by ``min(1, max_norm / (norm + eps))``
    and return the norm, as ``torch.nn.utils.clip_grad_norm_`` (L2 norm) does, with the
    norm of :func:`global_grad_norm` and the factor of :func:`portopt.clip_by_global_norm`:
    the same bits as ``portopt.Clipped`` on one process."""
    max_norm = check_real("max_norm", max_norm)
    eps = check_real("eps", eps)
    parameters = list(parameters) if not isinstance(parameters, torch.Tensor) else [parameters]
    norm = global_grad_norm(parameters)
    import array_api_compat.torch as xp

    factor = clip_factor(xp, norm, max_norm, eps, norm.device)
    if float(factor) == 1.0:
        return norm  # g * 1 is g, bit for bit: nothing to write
    for g in _grads_of(parameters):
        g_local = torch_sharding.local(g)
        if g_local.dtype == factor.dtype:
            g_local.mul_(factor)  # one correctly rounded product per element, as scale_by
        else:
            g_local.copy_(scale_by(xp, g_local, factor))
    return norm


def _is_process_group(value: Any) -> bool:
    return torch_sharding.dist is not None and isinstance(value, torch_sharding.dist.ProcessGroup)


def _grads_of(parameters: Iterable[torch.Tensor] | torch.Tensor) -> list:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def _numpy_dtype(dtype: torch.dtype) -> Any:
    return {torch.float32: np.float32, torch.float64: np.float64}[dtype]


def _drop_in(rule_class: type[Rule]) -> type[PortoptOptimizer]:
    doc = f"torch.optim drop-in running :class:`portopt.{rule_class.__name__}`.\n\n{rule_class.__doc__}"
    names = tuple(rule_class().hyperparameters())
    return type(rule_class.__name__, (PortoptOptimizer,),
                {"rule_class": rule_class, "hyperparameter_names": names, "__doc__": doc})


Adam = _drop_in(rules.Adam)
AdamW = _drop_in(rules.AdamW)
AMSGrad = _drop_in(rules.AMSGrad)
AdaGrad = _drop_in(rules.AdaGrad)
RMSProp = _drop_in(rules.RMSProp)
SGD = _drop_in(rules.SGD)
NAdam = _drop_in(rules.NAdam)
AdaDelta = _drop_in(rules.AdaDelta)
Adamax = _drop_in(rules.Adamax)
Lion = _drop_in(rules.Lion)
AdaBound = _drop_in(rules.AdaBound)
SignSGD = _drop_in(rules.SignSGD)

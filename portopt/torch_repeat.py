"""The drop-in's repeated step: a training loop's next ``step()`` with the same param groups,
params and state tensors costs identity checks and each group's repeated step
(:func:`portopt.plan.prepare_repeat`), not a new State, lists and checked plan per group.

A lane is made after a full step in which every group stepped all its params, at one step
count, as one compiled loop over plain CPU tensors. The next step takes it only if each group
is the same dict with the same params, its rule is the one it had (so no fixed hyperparameter
changed; ``lr`` and the other schedulable values are read from the group at every step, as in
the full step), every param has a gradient, and each param's state dict is the one the lane
wrote, holding the same slot tensors, step and host values. Every group is checked, and its
host scalars evaluated, before any is written; anything else runs the full step, which makes
a new lane.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import torch_sharding
from .plan import evaluate_first, interrupts_deferred, prepare_repeat

if TYPE_CHECKING:
    from .optimizer import PreparedStep, Rule, State
    from .plan import Plan
    from .split_master import SplitStep
    from .torch import PortoptOptimizer

__all__ = ["RepeatLane"]

_STRIDED = torch.strided


@dataclass
class _GroupLane:
    group: dict
    params: tuple
    rule: Rule
    plan: Plan
    state: State  # the group's portopt State, stepped again in place (slots: the state dicts' tensors)
    dicts: tuple[dict, ...]  # each param's torch state dict, as the last step left it
    host_names: tuple[str, ...]
    step_value: int  # the object the last step wrote as every dict's "step"
    # the state's slot lists, in the plan's order (the lane's own State: an in-place step
    # writes into these lists' tensors and never replaces the lists)
    slot_lists: tuple[list, ...] = ()

    def __post_init__(self) -> None:
        self.slot_lists = tuple(self.state.slots[name] for name in self.plan.slot_names)
        self._named_slots = tuple(zip(self.plan.slot_names, self.slot_lists))

    def unchanged(self, optimizer: PortoptOptimizer) -> list | None:
        """The group's gradients if everything the lane relies on holds, else None."""
        group = self.group
        params = group["params"]
        if (len(params) != len(self.params) or not all(map(operator.is_, params, self.params))
                or optimizer._group_rule(group) is not self.rule):
            return None
        get = optimizer.state.get
        step_value, slots, host, host_names = self.step_value, self._named_slots, self.state.host, self.host_names
        grads = []
        for index, (p, kept) in enumerate(zip(params, self.dicts)):
            g = p.grad
            if (g is None or g.layout is not _STRIDED  # sparse: the full step's error
                    or get(p) is not kept or kept.get("step") is not step_value):
                return None
            for name, leaves in slots:
                if kept.get(name) is not leaves[index]:
                    return None
            for name in host_names:
                if kept.get(name) is not host[name]:
                    return None
            grads.append(g)
        return grads

    def record(self) -> None:
        """Write the stepped count and host values into every param's state dict."""
        state = self.state
        self.step_value = step_value = state.step
        host = state.host
        for kept in self.dicts:
            kept["step"] = step_value
            kept.update(host)


class RepeatLane:
    """The repeated step of a drop-in (see the module's docstring)."""

    def __init__(self, groups: list[_GroupLane]) -> None:
        self.groups = groups

    @classmethod
    def after(cls, optimizer: PortoptOptimizer, stepped: list[tuple[dict, list, PreparedStep | SplitStep]]
              ) -> RepeatLane | None:
        """The lane for the next step after the full step ``stepped`` ((group, params, its
        prepared step) each, as written), or None where the next step cannot be repeated."""
        groups = optimizer.param_groups
        if not stepped or len(stepped) != len(groups):
            return None
        lanes = []
        for group, (stepped_group, params, prepared) in zip(groups, stepped):
            rule, plan = prepared.rule, prepared.plan
            if (stepped_group is not group or len(params) != len(group["params"])
                    or not all(map(operator.is_, params, group["params"]))
                    or not prepared.repeatable(rule) or plan.adapter.name != "torch"
                    or any(torch_sharding.is_sharded(p) for p in params)):
                return None
            state = prepared.state
            dicts = tuple(optimizer.state[p] for p in params)
            if any(kept.get("step") is not dicts[0].get("step") for kept in dicts):
                return None
            lanes.append(_GroupLane(group, tuple(params), rule, plan, state, dicts, tuple(state.host),
                                    dicts[0].get("step")))
        return cls(lanes)

    def step(self, optimizer: PortoptOptimizer) -> bool:
        """Step every group, or return False having written nothing. Every group is checked
        for what the lane relies on, then every group's host scalars are evaluated (schedules
        are user code), then each is bound and prepared; only then is any written. The scalars
        of a lane that falls through are left for the full step (``_evaluated``), so no
        schedule runs twice for one step."""
        groups = optimizer.param_groups
        if len(groups) != len(self.groups):  # add_param_group, or groups taken away
            return False
        all_grads = []
        for group, lane in zip(groups, self.groups):
            grads = lane.unchanged(optimizer) if group is lane.group else None
            if grads is None:
                return False
            all_grads.append(grads)
        evaluated = [evaluate_first(lane.rule, lane.state) for lane in self.groups]
        writes = []
        for lane, grads, scalars in zip(self.groups, all_grads, evaluated):
            write, _ = prepare_repeat(lane.rule, lane.plan, None, grads, lane.state, scalars,
                                      leaves=(lane.params, lane.slot_lists))
            if write is None:
                optimizer.__dict__["_evaluated"] = {id(lane.rule): (lane.rule, lane.state.step, scalars)
                                                    for lane, scalars in zip(self.groups, evaluated)}
                return False
            writes.append(write)
        if len(writes) == 1:  # all or nothing anyway: no need to hold Ctrl-C (a context costs ~3 us)
            self._write(optimizer, writes)
        else:
            with interrupts_deferred():
                self._write(optimizer, writes)
        return True

    def _write(self, optimizer: PortoptOptimizer, writes: list) -> None:
        for number, (lane, write) in enumerate(zip(self.groups, writes)):
            try:
                write()
            except BaseException:
                if number or lane.state.torn:
                    optimizer.__dict__["_torn"] = True
                raise
            lane.record()

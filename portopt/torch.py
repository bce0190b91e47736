"""torch.optim drop-ins: ``from portopt.torch import Adam`` and the loop stays as it was.

Each class is a ``torch.optim.Optimizer`` whose step runs the portopt rule of the same
name, so a torch model gets the bits NumPy would compute. Param groups, ``.grad``,
``zero_grad``, ``state_dict``/``load_state_dict`` and LR schedulers that edit
``group['lr']`` work as with torch.optim. State keys are torch.optim's (``exp_avg``, ...)
plus ``step`` (an int). For float16/bfloat16 params the state is float32.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch

from . import rules
from .optimizer import Rule
from .state import State

__all__ = ["Adam", "AdamW", "AMSGrad", "AdaGrad", "RMSProp", "SGD", "NAdam", "AdaDelta", "Adamax", "Lion",
           "AdaBound", "SignSGD"]


def _host_value(value: Any) -> Any:
    """Group values as the rule takes them: a 0-d tensor lr becomes a float."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, list):
        return tuple(_host_value(v) for v in value)
    return value


class PortoptOptimizer(torch.optim.Optimizer):
    """A torch.optim.Optimizer running ``rule_class`` on each param group."""

    rule_class: type[Rule]
    hyperparameter_names: tuple[str, ...]  # the rule's constructor arguments

    def __init__(self, params: Iterable[Any], **hyperparameters: Any) -> None:
        defaults = self.rule_class(**hyperparameters).hyperparameters()
        super().__init__(params, defaults)
        self.skipped_steps = 0  # steps skipped for non-finite gradients (skip_nonfinite=True)

    def _group_rule(self, group: dict) -> Rule:
        names = self.hyperparameter_names
        return self.rule_class(**{name: _host_value(group[name]) for name in names})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter with a ``.grad``; all groups are checked first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        new_states: dict[torch.Tensor, dict] = {}
        plans = []
        for group in self.param_groups:
            rule = self._group_rule(group)
            by_steps: dict[int, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError(f"{type(self).__name__} does not support sparse gradients")
                if not self.state.get(p):
                    new_states[p] = {"step": 0, **rule.init(p).slots}
                by_steps.setdefault(self._param_state(p, new_states)["step"], []).append(p)
            for steps_taken, params in by_steps.items():
                slots = {name: [self._param_state(p, new_states)[name] for p in params] for name in rule.slot_names()}
                state = State(rule=rule.name, step=steps_taken, slots=slots)
                plans.append((params, rule.plan_step(params, [p.grad for p in params], state)))
        if any(plan.skip for _, plan in plans):
            # skip_nonfinite: a non-finite gradient anywhere skips the whole step, every group.
            self.skipped_steps += 1
            return loss
        for p, fresh in new_states.items():
            self.state[p] = fresh
        for params, plan in plans:
            plan.apply()
            for p in params:
                self.state[p]["step"] = plan.state.step
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

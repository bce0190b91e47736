"""torch.optim drop-ins: change ``torch.optim`` to ``portopt.torch`` and nothing else.

Every rule torch.optim has is here under torch's name and signature — ``Adam, AdamW,
Adagrad, RMSprop, SGD, NAdam, Adadelta, Adamax, RAdam, Rprop, ASGD`` — with positional
arguments in torch's order and torch's switches accepted: ``foreach`` and ``fused`` choose
nothing (portopt takes its own bit-identical fast path) and are kept in the param groups as
torch keeps them; ``capturable=True`` and ``differentiable=True`` are refused with the
reason. portopt's own options are keyword-only: ``skip_nonfinite``, ``state_dtype``, ``skip_group``. The
rules torch lacks keep portopt's names (``AMSGrad, Lion, AdaBound, SignSGD``), and
portopt's spellings ``AdaGrad, RMSProp, AdaDelta`` are kept as other names of the same classes.

Each class is a ``torch.optim.Optimizer`` whose step runs the portopt rule, so a torch model
gets the bits NumPy would compute. Param groups, ``.grad``, ``zero_grad``, closures, LR
schedulers that edit ``group['lr']`` (or ``betas``, ``momentum``), ``state_dict`` /
``load_state_dict`` in torch's own format (a torch.optim state dict loads into a drop-in and
the other way round), ``copy.deepcopy``, pickle and ``torch.save`` work as with torch.optim.
For float16/bfloat16 params the state is float32 unless ``state_dtype`` says otherwise.

Under torch.distributed they work unchanged: with FSDP2 (DTensor params) each rank steps
its local shard, with no communication, and keeps its state as DTensors of the same layout
(so torch.distributed.checkpoint saves and loads it); as ``optimizer_class`` of
``ZeroRedundancyOptimizer`` each rank steps the whole tensors it owns. The only collective
is the skip decision of ``skip_nonfinite=True`` under FSDP2 (all ranks skip together).
:func:`clip_grad_norm_` clips by the same global norm, sharded or not.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from . import torch_sharding
from .optimizer import MASTER_WEIGHT_SLOTS, Rule
from .plan import interrupts_deferred
from .rules import RULES
from .state import State
from .torch_clipping import clip_grad_norm_, global_grad_norm
from .torch_repeat import RepeatLane

# torch.optim's implementation switches: accepted, kept in the groups, and (where they ask for
# what a portopt step cannot be) refused when true, with what to use instead.
_SWITCHES = ("foreach", "fused", "capturable", "differentiable")
_REFUSED = {
    "capturable": "capturable=True (a step recorded in a CUDA graph) is not supported: portopt computes each "
                  "step's scalars on the host, which a graph replay would not redo; step outside the graph, or use "
                  "torch.optim's capturable step",
    "differentiable": "differentiable=True (gradients through the step) is not supported: portopt steps under "
                      "no_grad with its own kernels; use torch.optim's differentiable step for that",
}
# portopt's options, keyword-only in every drop-in
_OWN = (inspect.Parameter("skip_nonfinite", inspect.Parameter.KEYWORD_ONLY, default=False),
        inspect.Parameter("state_dtype", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("master_weights", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("skip_group", inspect.Parameter.KEYWORD_ONLY, default=None))
_OWN_NAMES = frozenset(p.name for p in _OWN)


def _host_value(value: Any) -> Any:
    """Group values as the rule takes them: a 0-d tensor (lr, betas) becomes a float."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_host_value(v) for v in value)
    return value


def _identical(a: Any, b: Any) -> bool:
    """The same values of the same types, zeros of the same sign (``0 == False`` and ``0.0 ==
    -0.0`` are not the same hyperparameter), recursively through tuples."""
    if type(a) is not type(b):
        return False
    if type(a) is tuple:
        return len(a) == len(b) and all(map(_identical, a, b))
    if type(a) is float:
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b) or (a != a and b != b)
    return bool(a == b)


def _immutable(value: Any) -> bool:
    """A value that cannot change while the same object: a number, bool, string or None, or a
    tuple of them (not a tensor or a list, which can be edited in place)."""
    if type(value) is tuple:
        return all(map(_immutable, value))
    return value is None or type(value) in (float, int, bool, str)


class _GroupValue:
    """The current ``group[name]`` as a schedule (a callable of the steps taken); a schedule
    put in the group is evaluated. LR schedulers edit groups between steps."""

    __slots__ = ("group", "name")

    def __init__(self, group: dict, name: str) -> None:
        self.group, self.name = group, name

    def __call__(self, steps_taken: int) -> Any:
        value = self.group[self.name]
        if type(value) is float:  # the common case first
            return value
        value = _host_value(value)
        return value(steps_taken) if callable(value) else value


class PortoptOptimizer(torch.optim.Optimizer):
    """A torch.optim.Optimizer running ``rule_class`` on each param group."""

    rule_class: ClassVar[type[Rule]]
    torch_class: ClassVar[type[torch.optim.Optimizer] | None]  # the torch.optim class of this name, if any
    hyperparameter_names: ClassVar[tuple[str, ...]]  # the rule's constructor arguments
    fixed_names: ClassVar[tuple[str, ...]]  # those that cannot be schedules (a new value: a new rule)
    own_forms: ClassVar[frozenset[str]]  # portopt's keyword-only forms torch lacks (eps_hat, bias_correction)
    __signature__: ClassVar[inspect.Signature]

    def __init__(self, params: Iterable[Any], *args: Any, **kwargs: Any) -> None:
        """Arguments as the torch.optim class of this name takes them (see ``__signature__``),
        then keyword-only ``skip_nonfinite``, ``state_dtype`` (the state's dtype, as the
        rules take it) and ``skip_group``. ``skip_group``: the ranks that
        must skip together under ``skip_nonfinite=True`` where the optimizer cannot see them:
        ``"world"`` (every rank; picklable, so ZeRO's state dict, which keeps it, still saves)
        or a process group. Under ZeRO pass ``skip_group="world"``; FSDP2's DTensors bring
        their own group."""
        try:
            bound = type(self).__signature__.bind(params, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{type(self).__name__}(): {error}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        params = arguments.pop("params")
        skip_group = arguments.pop("skip_group")
        torch_class = type(self).torch_class
        if torch_class is not None:
            # torch's own checks of the same arguments, so bad ones raise what torch raises
            # (a portopt schedule in place of a number is checked at its value for the first step)
            torch_names = _torch_parameters(torch_class)
            torch_class([torch.zeros(1, requires_grad=True)],
                        **{name: value(0) if callable(value) and name in self.rule_class.schedulable else value
                           for name, value in arguments.items() if name in torch_names})
        if skip_group is not None and skip_group != "world" and not _is_process_group(skip_group):
            raise TypeError(f"skip_group must be 'world' or a torch.distributed ProcessGroup, got {skip_group!r}")
        for switch, reason in _REFUSED.items():
            if arguments.get(switch):
                raise ValueError(f"{type(self).__name__}: {reason}")
        hyperparameters = {name: _as_torch_takes_it(self, name, arguments[name])
                           for name in self.hyperparameter_names if name in arguments}
        self.rule_class(**{name: _as_the_rule_takes_it(self, name, value)  # portopt's checks
                           for name, value in hyperparameters.items()})
        defaults = {**hyperparameters, **{name: arguments[name] for name in _SWITCHES if name in arguments}}
        super().__init__(params, defaults)
        self.skip_group = skip_group
        self.skipped_steps = 0  # steps skipped for non-finite gradients (skip_nonfinite=True)

    # --- pickling, copying and torch's state dicts --------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # torch keeps defaults, state and param_groups only
        state["skip_group"] = self.__dict__.get("skip_group") if self.__dict__.get("skip_group") in (None, "world") \
            else None  # a process group does not travel; "world" does
        state["skipped_steps"] = self.__dict__.get("skipped_steps", 0)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("skip_group", None)
        self.__dict__.setdefault("skipped_steps", 0)
        for group in self.param_groups:  # a state dict from torch.optim or an older portopt
            for name, value in self.defaults.items():
                group.setdefault(name, value)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's format: ``step`` as a 0-d tensor, NAdam's ``mu_product`` and ASGD's
        ``eta``/``mu`` as torch keeps them, so torch.optim's class of the same name loads it."""
        exported = super().state_dict()
        for saved, group in zip(exported["param_groups"], self.param_groups):
            rule = self._group_rule(group)
            for index in saved["params"]:
                if index in exported["state"]:
                    exported["state"][index] = _export_param_state(rule, exported["state"][index])
        return exported

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A drop-in's or torch.optim's state dict (torch >= 2.1 layouts; missing newer group
        keys take this optimizer's defaults, as torch's ``__setstate__`` does). float32 state of
        float16/bfloat16 params stays float32."""
        saved = copy.deepcopy(state_dict)
        super().load_state_dict(state_dict)
        saved_ids = [i for group in saved["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, p in zip(saved_ids, params):
            for key, value in saved["state"].get(saved_id, {}).items():
                if isinstance(value, torch.Tensor) and key != "step":
                    self.state[p][key] = value.to(device=p.device)
        for group in self.param_groups:
            for name, value in self.defaults.items():
                group.setdefault(name, value)
        self.__dict__.pop("_rules", None)
        self.__dict__.pop("_torn", None)
        self.__dict__.pop("_repeat_lane", None)

    # --- the step -----------------------------------------------------------------------------
    def _group_rule(self, group: dict) -> Rule:
        """The group's rule: kept while the group's other hyperparameters stay the same (its
        checked step plans with it); schedulable ones (``lr``, ``eps``, ``weight_decay``) are
        read from the group at each step."""
        names, schedulable, fixed_names = self.hyperparameter_names, self.rule_class.schedulable, self.fixed_names
        cache = self.__dict__.setdefault("_rules", {})
        cached = cache.get(id(group))
        raw = tuple(map(group.__getitem__, fixed_names))
        # the very same immutable values as last step (floats, bools, tuples of them): the same rule
        if cached is not None and cached[0] is group and cached[3] is not None and all(map(operator.is_, raw,
                                                                                           cached[3])):
            return cached[2]
        values = {name: _as_the_rule_takes_it(self, name, _as_torch_takes_it(self, name, group[name]))
                  for name in names}
        fixed = tuple((name, values[name]) for name in fixed_names)
        same_objects = raw if all(map(_immutable, raw)) else None
        if cached is not None and cached[0] is group and _identical(cached[1], fixed):
            cache[id(group)] = (group, fixed, cached[2], same_objects)
            return cached[2]
        self.rule_class(**values)  # the group's values checked as numbers, with portopt's messages
        rule = self.rule_class(**{**dict(fixed), **{name: _GroupValue(group, name) for name in names
                                                      if name in schedulable}})
        cache[id(group)] = (group, fixed, rule, same_objects)
        return rule

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter with a ``.grad``; all groups are checked first."""
        if self.__dict__.get("_torn"):
            raise RuntimeError(f"{type(self).__name__}: an earlier step was stopped while writing, so the params and "
                               "state may hold part of it; load a checkpoint (load_state_dict) before stepping again")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # the repeated step writes through its compiled loop, which autograd never sees, so it
        # runs without no_grad (which costs ~2 us, a twentieth of a small step); a schedule in a
        # group is then evaluated in the caller's grad mode, not under no_grad
        lane = self.__dict__.pop("_repeat_lane", None)
        if lane is not None and lane.step(self):
            self.__dict__["_repeat_lane"] = lane
            return loss
        with torch.no_grad():
            self._full_step()
        return loss

    def _full_step(self) -> None:
        kept = self.__dict__.pop("_evaluated", {})  # host scalars the lane evaluated for this very step
        new_states: dict[torch.Tensor, dict] = {}
        pending = []
        plans = []
        stepped = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        for group in self.param_groups:
            rule = self._group_rule(group)
            host_names = rule.host_state_names()
            by_steps: dict[int, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError(f"{type(self).__name__} does not support sparse gradients")
                param_state = self.state.get(p)
                if not param_state or any(param_state.get(name) is None for name in rule.slot_names()):
                    new_states[p] = _fresh_param_state(rule, p, param_state)
                else:
                    _import_param_state(rule, param_state)
                by_steps.setdefault(self._param_state(p, new_states)["step"], []).append(p)
            for steps_taken, params in by_steps.items():
                slots = {name: [torch_sharding.local(self._param_state(p, new_states)[name]) for p in params]
                         for name in rule.slot_names()}
                first = self._param_state(params[0], new_states)  # NAdam's Πμ: one per parameter, as torch
                host = rule.restore_host_state(steps_taken, {name: float(first[name]) for name in host_names
                                                             if name in first})
                group_state = State(rule=rule.name, step=steps_taken, slots=slots, host=host)
                local_params = [torch_sharding.local(p) for p in params]
                local_grads = [torch_sharding.local(p.grad) for p in params]
                pending.append((group, params, rule, local_params, local_grads, group_state))
        # every group's schedules (user code) run before any group is checked; a lane that
        # fell through has evaluated them already for this step
        evaluated = []
        for _, _, rule, _, _, group_state in pending:
            earlier = kept.get(id(rule))
            evaluated.append(earlier[2] if earlier is not None and earlier[0] is rule and earlier[1] == group_state.step
                             else rule.evaluate_schedules(group_state))
        for (group, params, rule, local_params, local_grads, group_state), scalars in zip(pending, evaluated):
            plans.append((group, params, rule.plan_step(local_params, local_grads, group_state, evaluated=scalars)))
        skip = any(plan.skip for _, _, plan in plans)
        agreeing = torch_sharding.group_of(stepped) or torch_sharding.world_if_named(self.skip_group)
        if agreeing is not None and any(group.get("skip_nonfinite") for group in self.param_groups):
            device = torch_sharding.local(stepped[0]).device if stepped else torch.device("cpu")
            skip = torch_sharding.any_across(skip, agreeing, device)
        if skip:
            # skip_nonfinite: a non-finite gradient anywhere skips the whole step, every group.
            self.skipped_steps += 1
            return
        for p, fresh in new_states.items():
            self.state[p] = fresh
        with interrupts_deferred(len(plans) > 1):
            for number, (_, params, plan) in enumerate(plans):
                try:
                    plan.apply()
                except BaseException:
                    if number or plan.state.torn:  # an earlier group (or part of this one) was written
                        self.__dict__["_torn"] = True
                    raise
                stale = _OPTION_BUFFERS.difference(plan.rule.slot_names())
                for p in params:
                    kept = self.state[p]
                    kept["step"] = plan.state.step
                    kept.update(plan.state.host)
                    for name in stale.intersection(kept):  # another master_weights option's buffer
                        del kept[name]
        repeated = RepeatLane.after(self, plans)
        if repeated is not None:
            self.__dict__["_repeat_lane"] = repeated

    def _param_state(self, p: torch.Tensor, new_states: dict) -> dict:
        return new_states[p] if p in new_states else self.state[p]


def _as_torch_takes_it(optimizer: PortoptOptimizer, name: str, value: Any) -> Any:
    """A flag as torch reads it (``amsgrad=1`` is true there); portopt's own forms (``eps_hat``)
    and other values as given."""
    if name in optimizer.own_forms or isinstance(value, bool) or name not in _flags(optimizer.rule_class):
        return value
    return bool(value)


def _as_the_rule_takes_it(optimizer: PortoptOptimizer, name: str, value: Any) -> Any:
    """A group value as the rule is given it: a 0-d tensor (lr, betas) as a float, except for
    portopt's own forms, which the rule checks as they are."""
    return value if name in optimizer.own_forms else _host_value(value)


def _flags(rule_class: type[Rule]) -> frozenset[str]:
    flags = _FLAGS.get(rule_class)
    if flags is None:
        flags = _FLAGS[rule_class] = frozenset(name for name, p in inspect.signature(rule_class).parameters.items()
                                               if isinstance(p.default, bool))
    return flags


_FLAGS: dict[type, frozenset[str]] = {}


# The buffers of the master_weights options: a group switched to another option (in its
# param_group, or by a loaded state dict's) starts that option from the params as they are, and
# the old option's buffer goes at its next step (a later switch back must not find it stale).
_OPTION_BUFFERS = frozenset(MASTER_WEIGHT_SLOTS.values())


def _fresh_param_state(rule: Rule, p: torch.Tensor, previous: dict | None) -> dict:
    """A parameter's first state; a slot torch left empty (SGD without a buffer yet) is made."""
    initial = rule.init(torch_sharding.local(p))
    state = {"step": 0, **{k: torch_sharding.like(v, p) for k, v in initial.slots.items()}, **initial.host}
    for key, value in (previous or {}).items():
        if value is not None and key in state and key != "step":
            state[key] = value
    if previous and "step" in previous:
        state["step"] = int(_host_value(previous["step"]))
    return state


def _import_param_state(rule: Rule, state: dict) -> None:
    """torch's per-parameter state as the drop-in keeps it: ``step`` an int (torch: a 0-d
    tensor; SGD: none, then the buffer says a step was taken), host state as floats."""
    step = state.get("step")
    if step is None:
        state["step"] = 1 if rule.slot_names() else 0
    elif not isinstance(step, int):
        state["step"] = int(_host_value(step))
    for name in rule.host_state_names():
        if isinstance(state.get(name), torch.Tensor):
            state[name] = float(state[name].item())


def _export_param_state(rule: Rule, state: dict) -> dict:
    """The drop-in's per-parameter state in torch.optim's format (a new dict)."""
    state = dict(state)
    step = state.get("step", 0)
    state["step"] = torch.tensor(float(step), dtype=torch.float32)
    for name in rule.host_state_names():  # NAdam's mu_product, ASGD's eta and mu: tensors in torch
        if name in state and not isinstance(state[name], torch.Tensor):
            state[name] = torch.tensor(state[name], dtype=torch.float64)  # the host's float, exactly
    return state


def _own_forms(rule_class: type[Rule], torch_class: type | None) -> list[str]:
    """The rule's keyword-only options that torch's class lacks (Adam's eps_hat, bias_correction)."""
    if torch_class is None:
        return []
    torch_names = _torch_parameters(torch_class)
    return [name for name, p in inspect.signature(rule_class).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in torch_names and name not in _OWN_NAMES]


def _torch_parameters(torch_class: type) -> Any:
    """The names torch.optim's class takes."""
    return inspect.signature(torch_class).parameters


def _is_process_group(value: Any) -> bool:
    return torch_sharding.dist is not None and isinstance(value, torch_sharding.dist.ProcessGroup)


def _signature(rule_class: type[Rule], torch_class: type | None) -> inspect.Signature:
    """torch's signature for a rule torch has (positional order, switches); else the rule's.
    Defaults are the rule's (torch's, by design); portopt's own options come last, keyword-only."""
    rule_parameters = {name: p for name, p in inspect.signature(rule_class).parameters.items()
                       if name not in _OWN_NAMES}
    parameters = [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if torch_class is None:
        parameters += [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in rule_parameters.values()]
    else:
        for name, p in inspect.signature(torch_class).parameters.items():
            if name == "params":
                continue
            if name in rule_parameters:
                parameters.append(p.replace(default=rule_parameters[name].default, annotation=inspect.Parameter.empty))
            elif name in _SWITCHES:
                parameters.append(p.replace(annotation=inspect.Parameter.empty))
        # the rule's own keyword-only forms that torch lacks (Adam's bias_correction, eps_hat)
        parameters += [rule_parameters[name] for name in _own_forms(rule_class, torch_class)]
    ordered = [p for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    ordered += [p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return inspect.Signature([*ordered, *_OWN])


def _drop_in(rule_class: type[Rule], name: str) -> type[PortoptOptimizer]:
    peer = rule_class.torch_peer
    torch_class = getattr(torch.optim, peer.name, None) if peer is not None and not peer.options else None
    doc = f"torch.optim drop-in running :class:`portopt.{rule_class.__name__}`.\n\n{rule_class.__doc__}"
    signature = _signature(rule_class, torch_class)
    names = tuple(inspect.signature(rule_class).parameters)
    own_forms = frozenset(_own_forms(rule_class, torch_class))
    return type(name, (PortoptOptimizer,), {"rule_class": rule_class, "torch_class": torch_class,
                                            "hyperparameter_names": names, "own_forms": own_forms,
                                            "fixed_names": tuple(n for n in names if n not in rule_class.schedulable),
                                            "__doc__": doc, "__signature__": signature,
                                            "__module__": __name__})


def _drop_in_names() -> dict[str, type[Rule]]:
    """Every rule whose state is per parameter: under torch's name if torch has the rule as a
    class of its own, else under portopt's. (AdaGrad-Norm keeps one number for the whole tree,
    which torch.optim's per-parameter state has no place for.)"""
    names: dict[str, type[Rule]] = {}
    for rule_class in RULES.values():
        if rule_class.name == "AdaGradNorm":
            continue
        peer = rule_class.torch_peer
        names[peer.name if peer is not None and not peer.options else rule_class.name] = rule_class
    return names


DROP_INS: dict[str, type[PortoptOptimizer]] = {name: _drop_in(rule, name) for name, rule in _drop_in_names().items()}
# portopt's spellings of torch's names, the same classes
ALIASES = {"AdaGrad": "Adagrad", "RMSProp": "RMSprop", "AdaDelta": "Adadelta"}
globals().update(DROP_INS)
globals().update({alias: DROP_INS[name] for alias, name in ALIASES.items()})

__all__ = [*DROP_INS, *ALIASES, "PortoptOptimizer", "global_grad_norm", "clip_grad_norm_"]


def __getattr__(name: str) -> type[PortoptOptimizer]:  # for type checkers: the drop-ins are made above
    raise AttributeError(f"module 'portopt.torch' has no attribute {name!r}")

"""Gradient clipping for torch models by portopt's fixed-order global norm, sharded or not."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

import torch
from portopt.backends import adapter_for

from . import torch_sharding
from .checks import check_params
from .clipping import clip_factor, host_clip_factor, norm_dtype, scale_by
from .fast import norms
from .fast.norms import sum_of_squares
from .hyperparams import check_real
from .reductions import combine_frontiers, pairwise_frontier, pairwise_sum

__all__ = ["global_grad_norm", "clip_grad_norm_"]


def global_grad_norm(parameters: Iterable[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """:func:`portopt.global_norm` of the ``.grad`` of ``parameters``, sharded or not.

    Plain tensors are whole on every rank (DDP, ZeRO) and need no communication. For FSDP2's
    DTensors each rank computes the nodes of the fixed pairwise tree that lie in its shard
    and the ranks exchange those (O(log n) numbers per tensor), so the norm has the bits of
    the unsharded :func:`portopt.global_norm` on every rank, for even and uneven shards.
    """
    grads = _grads_of(parameters)
    whole = _whole_cpu_norm(grads) if grads else None
    return torch.from_numpy(whole) if whole is not None else _general_grad_norm(grads)


def _general_grad_norm(grads: list) -> torch.Tensor:
    """:func:`global_grad_norm` of ``grads`` where the whole-CPU-tensor lane does not serve."""
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
    grads = _grads_of(parameters)
    host = _whole_cpu_norm(grads) if grads else None
    if host is not None:  # the same norm and factor, from the compiled loop, in NumPy scalars
        factor = host_clip_factor(host, max_norm, eps)
        if factor != 1.0:
            scale = torch.from_numpy(factor)
            for g in grads:
                g.mul_(scale)
        return torch.from_numpy(host)
    norm = _general_grad_norm(grads)  # the lane did not serve: not tried again
    import array_api_compat.torch as xp

    factor = clip_factor(xp, norm, max_norm, eps, norm.device)
    if float(factor) == 1.0:
        return norm  # g * 1 is g, bit for bit: nothing to write
    for g in grads:
        g_local = torch_sharding.local(g)
        if g_local.dtype == factor.dtype:
            g_local.mul_(factor)  # one correctly rounded product per element, as scale_by
        else:
            g_local.copy_(scale_by(xp, g_local, factor))
    return norm


_NUMPY_TYPES = {torch.float32: np.float32, torch.float64: np.float64}  # the norm's dtypes
_HOST_DTYPES: dict[torch.dtype, np.dtype] = {dtype: np.dtype(kind) for dtype, kind in _NUMPY_TYPES.items()}


def _whole_cpu_norm(grads: list) -> np.ndarray | None:
    """The norm of :func:`global_grad_norm` (the same bits) of plain, contiguous CPU tensors of one
    dtype, float32 or float64, by the compiled loop straight from their addresses, as a NumPy 0-d
    array; None for anything else (sharded, other devices or dtypes, mixed, strided), which takes
    the general path with its checks."""
    dtype = grads[0].dtype
    host = _HOST_DTYPES.get(dtype)
    if host is None or not norms.compiled_norm_runs():
        return None
    addresses, sizes = [], []
    for g in grads:
        if type(g) is not torch.Tensor or g.dtype != dtype or g.device.type != "cpu" or not g.is_contiguous():
            return None
        addresses.append(g.data_ptr())
        sizes.append(g.numel())
    return np.asarray(np.sqrt(norms.pairwise_sum(norms.sums_of_squares(addresses, sizes, host))))


def _grads_of(parameters: Iterable[torch.Tensor] | torch.Tensor) -> list:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def _numpy_dtype(dtype: torch.dtype) -> Any:
    return _NUMPY_TYPES[dtype]

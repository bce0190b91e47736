"""What the torch drop-ins need under torch.distributed: DTensors' local shards, which
flattened elements a shard holds, and the few collectives that keep ranks in agreement.

FSDP2 (``fully_shard``) makes parameters DTensors sharded on dim 0 of a 1-D mesh; each
rank holds rows ``rank*c .. (rank+1)*c`` (``c = ceil(rows / ranks)``, as ``torch.chunk``),
which is a contiguous range of the flattened tensor. The optimizer step needs no
communication: every element's update depends on that element only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

try:  # torch without distributed support has no DTensor; nothing here is sharded then
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - every torch build in CI has torch.distributed
    dist = None  # type: ignore[assignment]
    DTensor = None  # type: ignore[assignment,misc]

__all__ = ["is_sharded", "local", "like", "flat_range", "group_of", "world_if_named", "any_across", "gather_across"]


def is_sharded(x: Any) -> bool:
    """Whether ``x`` is a DTensor."""
    return DTensor is not None and isinstance(x, DTensor)


def local(x: Any) -> Any:
    """The local shard of a DTensor (sharing its memory), or ``x`` itself."""
    return x.to_local() if is_sharded(x) else x


def like(local_tensor: torch.Tensor, param: Any) -> Any:
    """``local_tensor`` as a DTensor laid out as ``param`` (if ``param`` is one)."""
    if not is_sharded(param):
        return local_tensor
    return DTensor.from_local(local_tensor, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


def flat_range(x: Any, name: str = "tensor") -> tuple[int, int]:
    """``(offset, total)``: this rank's shard is elements ``offset .. offset + numel`` of the
    flattened (C order) global tensor of ``total`` elements.

    Plain tensors are whole. DTensors must be ``Shard(0)`` or ``Replicate()`` on a 1-D mesh
    (FSDP2's layout); a replicated tensor counts on mesh rank 0 only.
    """
    total = x.numel()
    if not is_sharded(x):
        return 0, total
    mesh, placements = x.device_mesh, tuple(x.placements)
    if mesh.ndim != 1 or len(placements) != 1:
        raise ValueError(f"{name} is sharded on a {mesh.ndim}-D mesh {placements}; portopt's sharded norm "
                         "supports FSDP2's layout: Shard(0) or Replicate() on a 1-D mesh")
    rank, ranks = mesh.get_local_rank(), mesh.size()
    if isinstance(placements[0], Replicate):
        return (0, total) if rank == 0 else (total, total)
    if not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise ValueError(f"{name} has placement {placements[0]}; portopt's sharded norm needs Shard(0) (a "
                         "contiguous range of the flattened tensor per rank) or Replicate()")
    rows = x.shape[0]
    chunk = -(-rows // ranks)
    first = min(rank * chunk, rows)
    held = x.to_local().shape[0]
    if held != min(chunk, rows - first):
        raise ValueError(f"{name}'s local shard has {held} rows; torch.chunk's layout gives rank {rank} "
                         f"{min(chunk, rows - first)} of {rows}")
    return first * (total // rows if rows else 0), total


def group_of(tensors: Sequence[Any], name: str = "parameters") -> Any:
    """The process group of the DTensors among ``tensors`` (one mesh for all), or None."""
    meshes: list[Any] = []
    for t in tensors:
        if is_sharded(t) and not any(t.device_mesh == mesh for mesh in meshes):
            meshes.append(t.device_mesh)
    if not meshes:
        return None
    if len(meshes) > 1:
        raise ValueError(f"{name} are DTensors on {len(meshes)} different device meshes; use one mesh")
    (mesh,) = meshes
    if mesh.ndim != 1:
        raise ValueError(f"{name} are sharded on a {mesh.ndim}-D mesh; portopt supports 1-D meshes (FSDP2)")
    return mesh.get_group()


def world_if_named(group: Any) -> Any:
    """``"world"`` as the default group; anything else unchanged."""
    return dist.group.WORLD if group == "world" else group


def any_across(flag: bool, group: Any, device: Any) -> bool:
    """Whether ``flag`` is true on any rank of ``group`` (every rank must call this)."""
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


def gather_across(item: Any, group: Any) -> list:
    """``item`` from every rank of ``group``, in rank order (every rank must call this)."""
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, item, group=group)
    return gathered

"""Functions the tests run on spawned gloo ranks (importable by name in the rank processes)."""

from __future__ import annotations

import io

import portopt.torch as pt
import torch
from portopt.conformance import distributed


def skip_on_one_rank(rank: int, ranks: int) -> tuple[int, bool, str]:
    """skip_nonfinite under FSDP2: a NaN in rank 1's shard only; every rank must skip.
    And a layout the sharded norm does not support (Shard(1)) is refused, naming it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    model = fully_shard(distributed.build_model(0))
    optimizer = pt.Adam(model.parameters(), lr=0.1, skip_nonfinite=True)
    x, y = distributed.batch(0, torch.float32)
    ((model(x) - y) ** 2).mean().backward()
    before = [p.detach().full_tensor().clone() for p in model.parameters()]
    if rank == 1:
        next(model.parameters()).grad.to_local()[0, 0] = float("nan")
    optimizer.step()
    unchanged = all(torch.equal(b, p.detach().full_tensor()) for b, p in zip(before, model.parameters()))
    column_sharded = torch.nn.Parameter(distribute_tensor(torch.ones(4, 6), init_device_mesh("cpu", (ranks,)),
                                                          [Shard(1)]))
    column_sharded.grad = column_sharded.detach().clone()
    try:
        pt.clip_grad_norm_([column_sharded], 1.0)
        refused = ""
    except ValueError as error:
        refused = str(error)
    return optimizer.skipped_steps, unchanged, refused


def raise_on_rank_one(rank: int, ranks: int) -> None:
    if rank == 1:
        raise RuntimeError("rank one fails on purpose")


def zero_skip_on_one_rank(rank: int, ranks: int, agree: bool) -> tuple[int, bool]:
    """skip_nonfinite under ZeRO: a NaN in the gradient of a parameter rank 0 owns. With
    ``skip_group`` every rank skips; without it only the owner does (the documented limit)."""
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(distributed.build_model(0))
    options = {"skip_group": "world"} if agree else {}
    optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=pt.Adam, lr=0.1, skip_nonfinite=True,
                                        **options)
    x, y = distributed.batch(0, torch.float32)
    ((model(x) - y) ** 2).mean().backward()
    owned_by_rank_0 = optimizer.optim.param_groups[0]["params"][0] if rank == 0 else None
    flags = [torch.tensor([0])]
    if rank == 0:
        owned_by_rank_0.grad.view(-1)[0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    dist.all_reduce(flags[0])  # keep the ranks in step before comparing
    unchanged = all(torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    optimizer.consolidate_state_dict(to=0)
    if rank == 0:  # the option sits in ZeRO's param groups; the state dict must still save
        torch.save(optimizer.state_dict(), io.BytesIO())
    return optimizer.optim.skipped_steps, unchanged

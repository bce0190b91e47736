"""Run a function on N local torch.distributed ranks (gloo, loopback only), bounded in time.

Used by the distributed conformance checks, their tests and the scaling benchmark. Each
rank is a fresh process (``torch.multiprocessing``, spawn); ``function(rank, ranks,
*args)`` runs after the process group is up, and its return values come back in rank order.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["run_ranks", "RanksFailed"]


class RanksFailed(RuntimeError):
    """A rank raised, died, or the ranks ran past their time limit."""


def run_ranks(function: Callable[..., Any], ranks: int, *args: Any, timeout: float = 240.0,
              threads: int = 1) -> list[Any]:
    """``[function(rank, ranks, *args) for rank in range(ranks)]``, each in its own process
    with a gloo process group on 127.0.0.1; raises :class:`RanksFailed` with the failing
    rank's traceback, or after ``timeout`` seconds (every process is then killed)."""
    import torch.multiprocessing as mp

    if not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"ranks must be an int >= 1, got {ranks!r}")
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_rank_main, args=(function, rank, ranks, port, threads, args, results))
                 for rank in range(ranks)]
    for process in processes:
        process.start()
    collected: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(collected) < ranks:
            try:
                rank, ok, value = results.get(timeout=1.0)
            except queue.Empty:
                _check_alive(processes, collected, deadline, timeout)
                continue
            if not ok:
                raise RanksFailed(f"rank {rank} of {ranks} failed:\n{value}")
            collected[rank] = value
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    return [collected[rank] for rank in range(ranks)]


def _check_alive(processes: list, collected: dict, deadline: float, timeout: float) -> None:
    for rank, process in enumerate(processes):
        if rank not in collected and not process.is_alive() and process.exitcode is not None:
            time.sleep(1.0)  # a result put just before exiting may still be in the pipe
            raise RanksFailed(f"rank {rank} of {len(processes)} exited with code {process.exitcode} "
                              "before returning (see its output above)")
    if time.monotonic() > deadline:
        raise RanksFailed(f"{len(processes)} ranks ran past {timeout:.0f} s; killed")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(function: Callable[..., Any], rank: int, ranks: int, port: int, threads: int, args: tuple,
               results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME=_loopback_name())
    import torch.distributed as dist

    import torch

    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=ranks)
        try:
            value = function(rank, ranks, *args)
        finally:
            dist.destroy_process_group()
        results.put((rank, True, value))
    except BaseException:  # report everything, including a failed assertion, to the parent
        results.put((rank, False, traceback.format_exc()))


def _loopback_name() -> str:
    """The loopback interface's name (gloo binds to it, never to a network interface)."""
    try:
        return next(name for _, name in socket.if_nameindex() if name.startswith("lo"))
    except StopIteration:  # pragma: no cover - every Linux and macOS machine has one
        return "lo"

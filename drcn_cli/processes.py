"""Several processes under torchrun: RANK, WORLD_SIZE and LOCAL_RANK read in one place, and the few collective
operations training needs (each a no-op in a single process).

Importing this module is cheap: torch is imported by the functions that use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["Processes", "all_mean", "any_process", "barrier", "join", "leave", "processes"]


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a run. ``distributed``: started by torchrun (RANK and
    WORLD_SIZE set), even with one process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and reports."""
        return self.rank == 0


def processes(environ: Mapping[str, str] | None = None) -> Processes:
    """The run's processes from torchrun's RANK, WORLD_SIZE and LOCAL_RANK; one process outside torchrun.

    Raises ConfigError when they are set but not a valid combination.
    """
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConfigError(
            f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r} are not integers"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return Processes(rank, world, local_rank, "RANK" in env and "WORLD_SIZE" in env)


def join(procs: Processes, device: torch.device) -> torch.device:
    """Join the process group of a distributed run (CUDA: this process's GPU, cuda:LOCAL_RANK, with NCCL; else
    gloo). Returns the device this process uses."""
    import torch

    if not procs.distributed:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=procs.rank, world_size=procs.world)
    return device


def leave(procs: Processes) -> None:
    """Leave the process group, if this process joined one."""
    if procs.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(procs: Processes) -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if procs.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_mean(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    """The mean of ``values`` over the processes (``values`` itself in a single process)."""
    if procs.distributed:
        import torch.distributed as dist

        dist.all_reduce(values)
        values = values / procs.world
    return values


def any_process(flag: bool, procs: Processes, device: torch.device) -> bool:
    """True when ``flag`` is true in any process, so that all of them stop at the same step."""
    if not procs.distributed:
        return flag
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())

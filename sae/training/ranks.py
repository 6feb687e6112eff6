"""Which process of a multi-process (DDP) run this is, and the few collectives a run's statistics need.

Before `trainer.fit` Lightning has not set the ranks up yet, so `global_rank()` reads what the launcher
gave the process: torchrun's RANK, a Slurm task's SLURM_PROCID (srun, also under submitit's Slurm
executor), a submitit local task's id, or the LOCAL_RANK / NODE_RANK Lightning gives the processes it
starts itself. Global rank 0 alone claims the run directory and writes the run's files; the others only
read them. During training every rank holds the same SAE and the same statistics: the helpers below
sum counts over ranks and check that the parameters have stayed in step.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

SLURM_INTERACTIVE_JOB_NAMES = ("bash", "interactive")  # Lightning's rule: such a job's tasks are not its ranks


def slurm_tasks_are_ranks() -> bool:
    """Whether this process is one of a Slurm job step's tasks (srun), which Lightning takes as its ranks."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in SLURM_INTERACTIVE_JOB_NAMES


def global_rank(devices_per_node: int = 1) -> int:
    """This process's global rank, known before the Trainer sets up; 0 in a single-process run.

    `devices_per_node` (trainer.devices) is needed only where Lightning itself started the processes
    of several nodes, each told its NODE_RANK.
    """
    env = os.environ
    if "RANK" in env:  # torchrun
        return int(env["RANK"])
    if env.get("SUBMITIT_EXECUTOR") == "local" and "SUBMITIT_LOCAL_GLOBALID" in env:
        return int(env["SUBMITIT_LOCAL_GLOBALID"])
    if "SLURM_PROCID" in env and slurm_tasks_are_ranks():
        return int(env["SLURM_PROCID"])
    return int(env.get("NODE_RANK", 0)) * devices_per_node + int(env.get("LOCAL_RANK", 0))


def local_rank() -> int:
    """This process's rank on its node (the index of its GPU), before the Trainer sets up."""
    env = os.environ
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"])
    if env.get("SUBMITIT_EXECUTOR") == "local" and "SUBMITIT_LOCAL_LOCALID" in env:
        return int(env["SUBMITIT_LOCAL_LOCALID"])
    if "SLURM_LOCALID" in env and slurm_tasks_are_ranks():
        return int(env["SLURM_LOCALID"])
    return 0


def is_global_zero(devices_per_node: int = 1) -> bool:
    return global_rank(devices_per_node) == 0


def world_size() -> int:
    """Processes training this SAE together (1 outside a distributed fit)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the sum over all ranks (nothing to do in a single process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (equal shapes), in rank order."""
    if world_size() == 1:
        return [tensor]
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return gathered


def _fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """Two integers that change with any bit of `tensor`: the sum of its bit patterns, and a position-weighted one."""
    flat = tensor.detach().reshape(-1)
    if flat.is_floating_point():
        bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[flat.element_size()]
        flat = flat.view(bits)
    flat = flat.long()
    weights = torch.arange(flat.numel(), device=flat.device) % 1009 + 1
    return torch.stack([flat.sum(), (flat * weights).sum()])


def check_in_sync(module: nn.Module, after: str) -> None:
    """Raise unless every rank holds bit-identical parameters and buffers (DDP never re-syncs them itself)."""
    if world_size() == 1:
        return
    names = [name for name, _ in module.named_parameters()] + [name for name, _ in module.named_buffers()]
    tensors = list(module.parameters()) + list(module.buffers())
    mine = torch.stack([_fingerprint(t).to(tensors[0].device) for t in tensors])
    gathered = all_gather(mine)
    for rank, theirs in enumerate(gathered):
        differ = [names[i] for i in range(len(names)) if not torch.equal(theirs[i], gathered[0][i])]
        if differ:
            raise RuntimeError(f"the ranks' SAEs diverged after {after}: rank {rank} differs from rank 0 in {', '.join(differ)}")

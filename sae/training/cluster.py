"""How one SAE's training processes are started and find each other: Lightning's DDP strategy and cluster plugins.

* One machine, `python train.py trainer.devices=N`: Lightning starts N-1 more copies of the command
  (each adding `hydra.run.dir=<this run's directory>`); they join at `trainer.fit`.
* Slurm (hydra/launcher=slurm with `tasks_per_node: ${trainer.devices}`, `nodes: ${trainer.num_nodes}`):
  srun starts one task per device on every node; Lightning's SLURMEnvironment reads their ranks.
  Requeueing stays submitit's job, so Lightning's own is off.
* hydra/launcher=local with `tasks_per_node: ${trainer.devices}`: submitit starts the tasks on this
  machine; `SubmititEnvironment` gives Lightning their ranks.
"""

from __future__ import annotations

import inspect
import os

import lightning as L
import torch
from lightning.pytorch.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from sae.core.errors import ConfigError
from sae.training.ranks import slurm_tasks_are_ranks

# DDP sums each bucket of gradients over the ranks; with one parameter per bucket, an element's place in its
# bucket (hence the order gloo/NCCL add the ranks' values in) is the same at the first step of every fit as
# later: a run resumed from a checkpoint then equals the uninterrupted run bit for bit, on any number of ranks.
ONE_PARAMETER_PER_BUCKET_MB = 1e-6


class SubmititEnvironment(ClusterEnvironment):
    """The tasks of one hydra/launcher=local (submitit_local) job as DDP ranks, on this machine."""

    def __init__(self) -> None:
        super().__init__()
        import submitit  # the launcher's library: only under it

        self.job = submitit.JobEnvironment()

    @staticmethod
    def detect() -> bool:
        return os.environ.get("SUBMITIT_EXECUTOR") == "local"

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        return 20_000 + int(self.job.job_id) % 20_000  # the same for every task of the job, distinct between jobs

    def world_size(self) -> int:
        return self.job.num_tasks

    def set_world_size(self, size: int) -> None:
        pass

    def global_rank(self) -> int:
        return self.job.global_rank

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return self.job.local_rank

    def node_rank(self) -> int:
        return self.job.node

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        if self.job.num_tasks != num_devices * num_nodes:
            raise ConfigError(
                f"this hydra/launcher=local job has {self.job.num_tasks} tasks but trainer.devices={num_devices}: "
                "set hydra.launcher.tasks_per_node=${trainer.devices} (conf/hydra/launcher/local.yaml does)."
            )


def cluster_plugins(processes: int) -> list[ClusterEnvironment] | None:
    """The cluster environment for a run of `processes` processes (None: Lightning's own choice)."""
    if SubmititEnvironment.detect() and processes > 1:
        return [SubmititEnvironment()]
    if slurm_tasks_are_ranks():
        # Under Slurm, requeueing is submitit's job (hydra/launcher=slurm); Lightning's own would be a second one.
        return [SLURMEnvironment(auto_requeue=False)]
    return None


def ddp_kwargs() -> dict:
    """DistributedDataParallel's settings where this torch has them: one parameter per gradient bucket, and no
    broadcast of the buffers before every forward (the ranks update them identically; `check_in_sync` checks)."""
    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    kwargs: dict = {}
    if "bucket_cap_mb_list" in accepted:
        kwargs["bucket_cap_mb_list"] = [ONE_PARAMETER_PER_BUCKET_MB]
    if "forward_sync_buffers" in accepted:  # still broadcasts them once, when DDP wraps the module
        kwargs["forward_sync_buffers"] = False
    return kwargs


def strategy(processes: int) -> str | DDPStrategy:
    return DDPStrategy(**ddp_kwargs()) if processes > 1 else "auto"


def leave_process_group() -> None:
    """Each process leaves DDP's process group once its fit has ended. Lightning destroys an NCCL group at exit
    but not a gloo one (CPU), whose worker threads are then torn down after Python's and can abort the finished
    process (SIGABRT, "terminate called without an active exception"). Not after a failed fit: other ranks may
    still be waiting on the group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class TorchThreads(L.Callback):
    """`trainer.threads` torch threads per process, applied again once the strategy is set up: Lightning's
    launcher sets cpu_count // processes per node when OMP_NUM_THREADS is unset, over a value set before."""

    def __init__(self, threads: int):
        self.threads = threads

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

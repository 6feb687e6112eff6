"""One SAE on two DDP ranks through hydra-submitit-launcher's Slurm launcher, on the real single-node Slurm
cluster of the tests: `--multirun hydra/launcher=slurm trainer.devices=2` makes a job of two tasks (srun), which
Lightning's SLURMEnvironment takes as its ranks. Several nodes work the same way (`trainer.num_nodes`); this
cluster has one. The run trains what one process trains, to float32 rounding."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.ddp import assert_trained_alike
from support.runs import REPO, TINY, read_json, script_env, train_tiny

pytestmark = pytest.mark.slow

# 50 steps, no evaluation (the tasks never load the language model: the cache is harvested before).
RUN = [
    "logger=csv",
    "sae.lr=1e-3",
    "trainer.accelerator=cpu",
    "trainer.threads=1",
    "sae.tokens=12800",
    "trainer.eval_tokens=0",
    "trainer.heldout_tokens=0",
]


def test_two_slurm_tasks_train_one_sae_as_one_process_does(slurm_cluster, tmp_path, activation_cache_dir):
    one = tmp_path / "one"
    train_tiny(one, activation_cache_dir, *RUN)

    sweep_dir = tmp_path / "sweep"
    args = [
        sys.executable,
        "train.py",
        "--multirun",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.gpus_per_node=null",  # a CPU cluster; on GPUs it is trainer.devices
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=null",
        "hydra.launcher.timeout_min=10",
        "trainer.devices=2",
        *TINY,
        *RUN,
        f"hydra.sweep.dir={sweep_dir}",
        f"activations.cache_dir={activation_cache_dir}",
    ]
    proc = subprocess.run(args, cwd=REPO, env={**script_env(), **slurm_cluster.env}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{slurm_cluster.logs()[-3000:]}"

    (run,) = [p.parent for p in sweep_dir.glob("*/summary.json")]
    logs = {p.name: p.read_text(errors="replace") for p in (sweep_dir / ".submitit").glob("*/*_log.*")}
    assert sorted(name.split("_log")[0][-2:] for name in logs if name.endswith("_log.err")) == ["_0", "_1"]  # 2 tasks
    everything = "".join(logs.values())
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in everything and "distributed_backend=gloo" in everything

    assert_trained_alike(run, one, lr=1e-3, steps=50)
    a, b = read_json(run / "summary.json"), read_json(one / "summary.json")
    assert a["steps"] == b["steps"] == 50
    assert a["density/dead_fraction"] == b["density/dead_fraction"]
    assert a["train/l0"] == pytest.approx(b["train/l0"], rel=1e-3)

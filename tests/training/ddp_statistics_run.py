"""A small DDP fit on hand-made activations, for tests/training/test_ddp_statistics.py:

    python tests/training/ddp_statistics_run.py OUT_DIR ARCHITECTURE DEVICES

The real training module, batches (CachedBatches with its shard), density and resampling callbacks and DDP
strategy on CPU (gloo). Every global batch holds 8 rows: 7 ordinary ones, and one "special" row on which
alone latent 0 fires, placed where rank 1 of 2 takes it at both steps. Latent 1 fires on every row, latents
2..7 never (they are resampled after the last step). Each rank writes what it holds to OUT_DIR/rank<r>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from callbacks.density import FeatureDensityCallback  # noqa: E402
from callbacks.resampling import NeuronResamplingCallback  # noqa: E402
from sae.activations.batches import CachedBatches, Shard  # noqa: E402
from sae.activations.cache import InMemoryActivations  # noqa: E402
from sae.architectures import build_sae  # noqa: E402
from sae.training.cluster import leave_process_group, strategy  # noqa: E402
from sae.training.config import ResampleConfig, SAEConfig  # noqa: E402
from sae.training.module import SAETrainingModule  # noqa: E402
from sae.training.resampling import ResampleSchedule  # noqa: E402

D, F, B, STEPS, SEED = 4, 8, 8, 2, 0


def special_row_index() -> int:
    """A cache row that rank 1 of 2 takes at every step (each step is a pass of its own over the 8 rows)."""
    batches = CachedBatches(InMemoryActivations(torch.zeros(B, D)), B, STEPS, SEED)
    second_half = [set(batches._permutation(epoch)[B // 2 :].tolist()) for epoch in range(STEPS)]
    return min(set.intersection(*second_half))


def activations(architecture: str) -> torch.Tensor:
    if architecture in ("batchtopk", "relu-float64"):  # no ties: compared with one process's training
        return torch.randn(B, D, generator=torch.Generator().manual_seed(1))
    data = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).repeat(B, 1)
    data[special_row_index(), 0] = 1.0
    return data


class Data(L.LightningDataModule):
    def __init__(self, rows: InMemoryActivations):
        super().__init__()
        self.cache = rows

    def train_dataloader(self):
        return CachedBatches(self.cache, B, STEPS, SEED, shard=Shard(self.trainer.global_rank, self.trainer.world_size))

    def resampling_inputs(self, step: int):
        yield self.cache.data


def build(architecture: str):
    float64 = architecture == "relu-float64"  # real steps, in float64: the ranks' gradients average to the batch's
    architecture = architecture.removesuffix("-float64")
    k = {"relu": None, "topk": 2, "batchtopk": 2}[architecture]
    cfg = SAEConfig(
        architecture=architecture,
        expansion=2,
        k=k,
        l1_coefficient=1e-2 if float64 else 0.0,
        lr=1e-2 if float64 else 1e-9,  # else the weights barely move: which latents fire is fixed by construction
        batch_size=B,
        tokens=B * STEPS,
        b_dec_init="zeros",
        resample=ResampleConfig(enabled=architecture == "relu" and not float64),
        seed=SEED,
    )
    torch.manual_seed(SEED)
    sae = build_sae(architecture, D, F, cfg.architecture_settings())
    if architecture != "batchtopk" and not float64:
        with torch.no_grad():
            sae.W_enc.zero_()
            sae.W_enc[0, 0] = 10.0  # latent 0: pre 10·x0 − 5, positive on the special row only
            sae.W_enc[1, 1] = 1.0  # latent 1: pre x1 = 1 on every row
            sae.b_enc.copy_(torch.tensor([-5.0, 0.0] + [-1.0] * (F - 2)))  # latents 2..7: pre −1, never fire
    return sae, cfg


def main() -> None:
    out, architecture, devices = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    sae, cfg = build(architecture)
    start = {name: t.tolist() for name, t in sae.state_dict().items()}
    module = SAETrainingModule(sae, cfg, log_every_n_steps=1)
    data = Data(InMemoryActivations(activations(architecture)))
    density = FeatureDensityCallback(STEPS, out / "plots")
    callbacks: list[L.Callback] = [density]
    resampling = None
    if cfg.resample.enabled:
        schedule = ResampleSchedule(steps=(STEPS,), dead_window=STEPS, window_tokens=STEPS * B, n_inputs=B, note="")
        resampling = NeuronResamplingCallback(schedule, data.resampling_inputs, 0.2, SEED)
        callbacks.append(resampling)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy(devices),
        use_distributed_sampler=False,
        max_steps=STEPS,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        precision="64-true" if architecture.endswith("float64") else "32-true",
    )
    trainer.fit(module, datamodule=data)
    leave_process_group()
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "density": density.last_summary,
        "special_row": special_row_index(),
        "start": start,
        "state": {name: t.tolist() for name, t in sae.state_dict().items()},
    }
    if resampling is not None:
        optimizer = trainer.optimizers[0]
        record["resampling"] = {
            "steps_since_fired": resampling.steps_since_fired.tolist(),
            "history": resampling.history,
            "dead_exp_avg": optimizer.state[sae.W_dec]["exp_avg"][2:].abs().max().item(),
        }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()

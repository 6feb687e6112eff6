"""Training throughput side by side: this project's training path (the LightningModule as train.py builds it),
SAELens's trainer (`SAETrainer`, run in `.venv-saelens` as a subprocess) and a bare torch loop, on the same cached
activations in the same order, the same SAE shape, initial weights and precision (float32), interleaved repeats.

The recipe is `sae=anthropic_2024`, the loss SAELens's "standard" SAE trains with (Σ squared error +
λ·Σ f_i‖W_d,i‖ on inputs scaled to E‖x‖ = √d, gradient clipping at 1, Adam (0.9, 0.999), λ warm-up and lr
decay). After the same number of steps each SAE's loss, MSE, L0 and explained variance are measured by one
function on the same held-out activations, so "as good" is compared, not only "as fast".

A fresh SAE fires ~10% of its latents, where every trainer runs dense products; most of a long run is
spent far sparser. `--warm-start-steps N` first trains the SAE N steps (the bare loop, untimed, λ
warmed up, constant lr) and starts all three trainers from that SAE, so the timed steps show the
speed of a run's bulk.

    bash scripts/setup_saelens.sh                       # once: builds .venv-saelens
    python bench/compare_saelens.py                     # d 576 -> 4,608, batches 512 and 4,096
    python bench/compare_saelens.py --warm-start-steps 1000 --batch-sizes 512   # from a partly trained SAE
    python bench/compare_saelens.py --expansion 1 --batch-sizes 64 --steps 3 --cache-tokens 4096 --repeats 1   # a smoke run
    python bench/compare_saelens.py --record docs/results/compare_saelens.json   # also a stamped record for the docs
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import describe  # noqa: E402  (bench/machine.py)

from bench.record import add_record_option, write_record  # noqa: E402
from sae.activations.cache import build_cache  # noqa: E402
from sae.activations.config import ActivationsConfig  # noqa: E402
from sae.architectures import SparseAutoencoder  # noqa: E402
from sae.architectures import build_sae as build_architecture  # noqa: E402
from sae.lm.bridge import lazy_bridge  # noqa: E402
from sae.lm.config import ModelConfig  # noqa: E402
from sae.text.sources import DataConfig  # noqa: E402
from sae.training.config import SAEConfig  # noqa: E402
from sae.training.module import SAETrainingModule, l1_warmup_factor, lr_decay_factor  # noqa: E402
from sae.training.run import initial_sae  # noqa: E402

SAELENS_PYTHON = REPO / ".venv-saelens" / "bin" / "python"

# Runs in .venv-saelens: argv = activations.npy, init.safetensors, settings.json, out.safetensors.
SAELENS_TRAINER = r"""
import json, sys, time
import numpy as np, torch
from safetensors.torch import load_file, save_file
from sae_lens import SAETrainer
from sae_lens.config import SAETrainerConfig
from sae_lens.config import LoggingConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

acts_path, init_path, settings_path, out_path = sys.argv[1:5]
s = json.loads(open(settings_path).read())
torch.set_num_threads(s["threads"])
acts = torch.from_numpy(np.load(acts_path))
B, steps = s["batch_size"], s["steps"]
cfg = StandardTrainingSAEConfig(d_in=acts.shape[1], d_sae=s["d_sae"], dtype="float32", device="cpu",
                                l1_coefficient=s["l1"], l1_warm_up_steps=s["l1_warmup_steps"], decoder_init_norm=0.1,
                                apply_b_dec_to_input=True, normalize_activations="expected_average_only_in")
sae = StandardTrainingSAE(cfg)
sae.load_state_dict({k: v for k, v in load_file(init_path).items()}, strict=True)
trainer_cfg = SAETrainerConfig(total_training_samples=B * steps, train_batch_size_samples=B, lr=s["lr"],
                               lr_end=0.0, lr_decay_steps=s["lr_decay_steps"], adam_beta1=s["betas"][0],
                               adam_beta2=s["betas"][1], device="cpu", autocast=False,
                               logger=LoggingConfig(log_to_wandb=False))
clock = {}

def batches():
    clock["start"] = time.perf_counter()
    index = torch.arange(B)
    for step in range(steps):
        yield acts[(step * B + index) % len(acts)]

trainer = SAETrainer(trainer_cfg, sae, batches())
trainer.activation_scaler.scaling_factor = s["input_scale"]  # the same scale as ours, not a fresh estimate
trainer.fit()
seconds = time.perf_counter() - clock["start"]
save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, out_path)
import sae_lens
print(json.dumps({"seconds": seconds, "version": sae_lens.__version__}))
"""


def recipe(batch_size: int, steps: int, expansion: int) -> SAEConfig:
    """`conf/sae/anthropic_2024.yaml` with this benchmark's shape and budget."""
    raw = OmegaConf.load(REPO / "conf" / "sae" / "anthropic_2024.yaml")
    raw.pop("defaults", None)
    merged = OmegaConf.merge(
        OmegaConf.structured(SAEConfig),
        raw,
        {"expansion": expansion, "batch_size": batch_size, "tokens": batch_size * steps, "dtype": "float32"},
    )
    return OmegaConf.to_object(merged)


class SameBatches:
    """Step s reads rows (s·B .. s·B+B−1) mod N: the order every trainer here sees."""

    def __init__(self, acts: torch.Tensor, batch_size: int, steps: int, clock: dict | None = None):
        self.acts, self.batch_size, self.steps, self.clock = acts, batch_size, steps, clock

    def __iter__(self):
        if self.clock is not None:
            self.clock["start"] = time.perf_counter()
        index = torch.arange(self.batch_size)
        for step in range(self.steps):
            yield self.acts[(step * self.batch_size + index) % len(self.acts)]


def train_lightning(init: SparseAutoencoder, cfg: SAEConfig, acts: torch.Tensor) -> tuple[float, SparseAutoencoder]:
    sae = copy.deepcopy(init)
    module = SAETrainingModule(sae, cfg, log_every_n_steps=50)
    clock: dict = {}
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=cfg.total_steps,
        max_epochs=-1,
        precision="32-true",
        gradient_clip_val=cfg.grad_clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=SameBatches(acts, cfg.batch_size, cfg.total_steps, clock))
    return time.perf_counter() - clock["start"], sae


def train_bare(init: SparseAutoencoder, cfg: SAEConfig, acts: torch.Tensor) -> tuple[float, SparseAutoencoder]:
    """The same optimisation as the LightningModule, as a plain loop."""
    sae = copy.deepcopy(init)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    steps = cfg.total_steps
    clock: dict = {}
    for step, x in enumerate(SameBatches(acts, cfg.batch_size, steps, clock)):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_decay_factor(step, steps, cfg.lr_decay_fraction)
        l1 = cfg.l1_coefficient * l1_warmup_factor(step, steps, cfg.l1_warmup_fraction)
        terms = sae.loss(x, l1)
        sae.observe_firing(terms.counted_fires(), len(x))  # TopK's dead-latent counters, as the trainer updates them
        loss = terms.total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        sae.before_optimizer_step_()
        opt.step()
        sae.after_optimizer_step_()
    return time.perf_counter() - clock["start"], sae


def train_saelens(init: SparseAutoencoder, cfg: SAEConfig, acts_path: Path, tmp: Path) -> tuple[float, SparseAutoencoder, str]:
    """SAELens trains in the scaled space as ours does and folds the scale in at the end; unfold it to compare."""
    s = float(init.input_scale)
    save_file({k: init.state_dict()[k].contiguous() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}, tmp / "init.safetensors")
    steps = cfg.total_steps
    settings = {
        "batch_size": cfg.batch_size,
        "steps": steps,
        "d_sae": init.n_features,
        "l1": cfg.l1_coefficient,
        "l1_warmup_steps": int(cfg.l1_warmup_fraction * steps),
        "lr": cfg.lr,
        "lr_decay_steps": steps - int((1 - cfg.lr_decay_fraction) * steps),
        "betas": list(cfg.betas),
        "input_scale": s,
        "threads": torch.get_num_threads(),
    }
    (tmp / "settings.json").write_text(json.dumps(settings))
    proc = subprocess.run(
        [
            str(SAELENS_PYTHON),
            "-c",
            SAELENS_TRAINER,
            str(acts_path),
            str(tmp / "init.safetensors"),
            str(tmp / "settings.json"),
            str(tmp / "saelens_out.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"SAELens trainer failed:\n{proc.stderr[-4000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    out = load_file(tmp / "saelens_out.safetensors")
    sae = build_architecture(init.name, init.d_in, init.n_features, dataclasses.asdict(init.settings))
    with torch.no_grad():
        sae.W_enc.copy_(out["W_enc"] / s)
        sae.b_enc.copy_(out["b_enc"])
        sae.W_dec.copy_(out["W_dec"] * s)
        sae.b_dec.copy_(out["b_dec"] * s)
        sae.input_scale.fill_(s)
    return info["seconds"], sae, info["version"]


@torch.no_grad()
def quality(sae: SparseAutoencoder, cfg: SAEConfig, x: torch.Tensor) -> dict[str, float]:
    terms = sae.loss(x, cfg.l1_coefficient)
    err = (x - terms.x_hat).pow(2).sum()
    return {
        "loss": float(terms.total),
        "mse": float(err / x.numel()),
        "l0": float((terms.features > 0).sum(1).float().mean()),
        "explained_variance": float(1 - err / (x - x.mean(0)).pow(2).sum()),
    }


def quiet_lightning() -> None:
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-tokens", type=int, default=200_000)
    ap.add_argument("--heldout-tokens", type=int, default=8192)
    ap.add_argument("--warm-start-steps", type=int, default=0, help="untimed training steps before the timed ones")
    add_record_option(ap)
    args = ap.parse_args()
    if not SAELENS_PYTHON.exists():
        sys.exit(f"no SAELens environment at {SAELENS_PYTHON}: build it with `bash scripts/setup_saelens.sh`.")

    quiet_lightning()
    machine = describe()
    print(f"machine: {machine}")
    # The loop called "bare torch loop" above, named in the record by what sets it apart from train_throughput.py's.
    record_names = {"bare torch loop": "plain torch loop (same kernel, default Adam, no fire counts)"}
    rows = []
    model_cfg = ModelConfig(name="embedded:smollm2", alias="smollm2", layer=args.layer)
    data_cfg = DataConfig(source="wiki_offline", alias="wiki", context_length=128)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        act_cfg = ActivationsConfig(
            cache_dir=str(tmp / "cache"),
            n_tokens=args.cache_tokens + args.heldout_tokens,
            buffer_tokens=16384,
            shard_tokens=65536,
        )
        cache = build_cache(lazy_bridge(model_cfg), model_cfg, data_cfg, act_cfg)
        everything = cache.sample(len(cache), seed=0)
        acts, heldout = everything[: -args.heldout_tokens].contiguous(), everything[-args.heldout_tokens :]
        np.save(tmp / "acts.npy", acts.numpy())
        d = acts.shape[1]
        print(
            f"activations: {len(acts):,} training + {len(heldout):,} held-out tokens of blocks.{args.layer}.hook_mlp_out "
            f"(d {d}); SAE {d} -> {d * args.expansion}; float32; recipe anthropic_2024; {args.steps} steps; "
            f"{args.repeats} interleaved repeats (best time kept)"
        )
        for batch_size in args.batch_sizes:
            cfg = recipe(batch_size, args.steps, args.expansion)
            torch.manual_seed(cfg.seed)
            init = initial_sae(cfg, acts[:8192])
            if args.warm_start_steps:
                warm_cfg = dataclasses.replace(recipe(batch_size, args.warm_start_steps, args.expansion), lr_decay_fraction=0.0)
                init = train_bare(init, warm_cfg, acts)[1]
                cfg = dataclasses.replace(cfg, l1_warmup_fraction=0.0)  # λ is warmed up already
            times: dict[str, list[float]] = {"this project (Lightning)": [], "SAELens SAETrainer": [], "bare torch loop": []}
            results = {}
            version = "?"
            for _ in range(args.repeats):
                seconds, results["this project (Lightning)"] = train_lightning(init, cfg, acts)
                times["this project (Lightning)"].append(seconds)
                seconds, results["SAELens SAETrainer"], version = train_saelens(init, cfg, tmp / "acts.npy", tmp)
                times["SAELens SAETrainer"].append(seconds)
                seconds, results["bare torch loop"] = train_bare(init, cfg, acts)
                times["bare torch loop"].append(seconds)
            tokens = batch_size * args.steps
            rate = {name: tokens / min(t) for name, t in times.items()}
            warm = f"; from the SAE after {args.warm_start_steps} untimed steps" if args.warm_start_steps else ""
            print(f"\nbatch {batch_size:,} ({tokens:,} tokens per run{warm}; SAELens {version})")
            print(f"{'trainer':28s} {'tokens/s':>10s} {'loss':>10s} {'MSE':>10s} {'L0':>8s} {'expl.var':>9s}")
            for name in [*times, "(initial weights)"]:
                q = quality(results.get(name, init), cfg, heldout)
                speed = f"{rate[name]:10,.0f}" if name in rate else f"{'':10s}"
                print(f"{name:28s} {speed} {q['loss']:10.6g} {q['mse']:10.6g} {q['l0']:8.1f} {q['explained_variance']:9.4f}")
            ours, theirs, bare = rate["this project (Lightning)"], rate["SAELens SAETrainer"], rate["bare torch loop"]
            print(f"ratio ours/SAELens {ours / theirs:.3f}   ours/bare {ours / bare:.3f}   SAELens/bare {theirs / bare:.3f}")
            for name in times:
                q = quality(results[name], cfg, heldout)
                rows.append(
                    {
                        "batch": batch_size,
                        "warm start (steps)": args.warm_start_steps,
                        "trainer": record_names.get(name, name),
                        "tokens/s": round(rate[name]),
                        "vs SAELens": round(rate[name] / theirs, 3),
                        "loss": round(q["loss"], 6),
                        "MSE": round(q["mse"], 6),
                        "L0": round(q["l0"], 1),
                        "expl. var.": round(q["explained_variance"], 4),
                        "SAELens": version,
                    }
                )
    if args.record:
        title = (
            f"SAE {d} -> {d * args.expansion}, recipe anthropic_2024, float32, {args.steps} timed steps per run, "
            f"best of {args.repeats} interleaved repeats; quality on {args.heldout_tokens:,} held-out activations"
        )
        write_record(args.record, title, rows, machine=machine)


if __name__ == "__main__":
    main()

"""Training throughput: Lightning path vs a bare torch loop over the same SAE and cached activations,
and harvest throughput with and without `stop_at_layer`. Everything is measured side by side in
one run, so the ratios hold on a noisy shared machine even when the absolute numbers move.

Two Lightning figures: the LightningModule alone in Lightning's loop, and with the callbacks a run has
every step (feature density, resampling's bookkeeping, the checkpoint's clock, the progress bar, the time
estimate; no resampling event, checkpoint or evaluation falls within the timed steps).

    python bench/train_throughput.py [--layer 6] [--expansion 8] [--batch-size 512] [--steps 150] [--dtype bf16]
    python bench/train_throughput.py --record docs/results/train_throughput.json   # also a stamped record for the docs
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from bench.record import add_record_option, write_record  # noqa: E402
from callbacks.checkpoint import RunCheckpoint  # noqa: E402
from callbacks.density import FeatureDensityCallback  # noqa: E402
from callbacks.progress import StepProgressBar, TimeEstimate  # noqa: E402
from callbacks.resampling import NeuronResamplingCallback  # noqa: E402
from sae.activations.batches import CachedBatches  # noqa: E402
from sae.activations.cache import build_cache  # noqa: E402
from sae.activations.config import ActivationsConfig
from sae.architectures import ReLUSAE as SparseAutoencoder  # noqa: E402
from sae.lm.bridge import lazy_bridge  # noqa: E402
from sae.lm.config import ModelConfig
from sae.text.sources import DataConfig
from sae.training.config import SAEConfig  # noqa: E402
from sae.training.module import SAETrainingModule  # noqa: E402
from sae.training.resampling import resample_schedule  # noqa: E402


def bare_loop(sae: SparseAutoencoder, batches, cfg: SAEConfig, autocast: bool) -> float:
    """Seconds for the same optimizer steps as the LightningModule (same kernel, same fused Adam), written as a
    plain loop over the same batches."""
    sae.sparse_kernel = cfg.sparse_kernel
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), fused=True)
    start = time.perf_counter()
    for x in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = sae.loss(x, cfg.l1_coefficient).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.before_optimizer_step_()
        opt.step()
        sae.after_optimizer_step_()
    return time.perf_counter() - start


class _Timer(L.Callback):
    """From the first step's start to the last step's end, before any other callback's work at that step (the
    density callback's closing plot)."""

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == 0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == trainer.max_steps:
            self.seconds = time.perf_counter() - self.start


def run_callbacks(cfg: SAEConfig, steps: int, tmp: str) -> list[L.Callback]:
    """What `build_callbacks` gives a run, less the evaluation: none of them has an event in `steps`."""
    schedule = resample_schedule(cfg.resample, steps, cfg.batch_size)
    assert not schedule.steps, "a resampling event would fall within the timed steps"
    return [
        FeatureDensityCallback(10**9, Path(tmp) / "plots"),
        RunCheckpoint(Path(tmp) / "last.ckpt", every_n_steps=10**9, every_minutes=15),
        TimeEstimate(cfg.batch_size),
        NeuronResamplingCallback(schedule, lambda step: iter(()), cfg.resample.encoder_scale),
        StepProgressBar(),
    ]


def lightning_loop(sae: SparseAutoencoder, cache, cfg: SAEConfig, steps: int, callbacks: list[L.Callback] = ()) -> float:
    module = SAETrainingModule(sae, cfg, log_every_n_steps=50)
    timer = _Timer()
    bar = any(isinstance(c, StepProgressBar) for c in callbacks)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=any(isinstance(c, RunCheckpoint) for c in callbacks),
        enable_progress_bar=bar,
        enable_model_summary=False,
        callbacks=[timer, *callbacks],
        precision="bf16-mixed" if cfg.dtype == "bf16" else "32-true",
        num_sanity_val_steps=0,
    )
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
        trainer.fit(module, train_dataloaders=CachedBatches(cache, cfg.batch_size, steps, 0))
    return timer.seconds


def harvest_rate(bridge, model_cfg: ModelConfig, data_cfg: DataConfig, contexts: int, stop: bool) -> float:
    from sae.lm.bridge import bos_token_id, hook_name
    from sae.text.contexts import batched, iter_contexts, iter_texts

    tokens = next(
        batched(
            iter_contexts(iter_texts(data_cfg, "train"), bridge.tokenizer, data_cfg.context_length, bos_token_id(bridge)),
            contexts,
        )
    )
    with torch.inference_mode():
        bridge.run_with_cache(tokens[:2], names_filter=hook_name(model_cfg), stop_at_layer=model_cfg.layer + 1)
        start = time.perf_counter()
        bridge.run_with_cache(tokens, names_filter=hook_name(model_cfg), stop_at_layer=model_cfg.layer + 1 if stop else None)
        return tokens.numel() / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=512, help="the default run's batch")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--dtype", choices=["float32", "bf16"], default="float32")
    ap.add_argument("--cache-tokens", type=int, default=60_000)
    ap.add_argument("--model-dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best of each is kept")
    add_record_option(ap)
    args = ap.parse_args()
    machine = describe()
    print(machine)

    model_cfg = ModelConfig(name="embedded:smollm2", alias="smollm2", layer=args.layer, dtype=args.model_dtype)
    data_cfg = DataConfig(source="wiki_offline", alias="wiki", context_length=128)
    bridge = lazy_bridge(model_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        acts = ActivationsConfig(cache_dir=tmp, n_tokens=args.cache_tokens, buffer_tokens=16384, shard_tokens=32768)
        cache = build_cache(bridge, model_cfg, data_cfg, acts)
        cfg = SAEConfig(
            expansion=args.expansion, batch_size=args.batch_size, tokens=args.batch_size * args.steps, dtype=args.dtype
        )
        d = cache.d
        tokens = args.steps * args.batch_size
        bare_s, light_s, run_s = [], [], []
        for _ in range(args.repeats):  # interleaved, best of each: shared machines are noisy
            torch.manual_seed(0)
            sae = SparseAutoencoder(d, d * args.expansion)
            batches = CachedBatches(cache, args.batch_size, args.steps, 0)
            bare_s.append(bare_loop(sae, batches, cfg, args.dtype == "bf16"))
            torch.manual_seed(0)
            light_s.append(lightning_loop(SparseAutoencoder(d, d * args.expansion), cache, cfg, args.steps))
            torch.manual_seed(0)
            callbacks = run_callbacks(cfg, args.steps, tmp)
            run_s.append(lightning_loop(SparseAutoencoder(d, d * args.expansion), cache, cfg, args.steps, callbacks))
        bare_rate, light_rate, run_rate = tokens / min(bare_s), tokens / min(light_s), tokens / min(run_s)
        print(
            f"SAE {d}x{d * args.expansion} ({args.expansion}x), batch {args.batch_size}, {args.steps} steps, {args.dtype}, "
            f"{torch.get_num_threads()} threads, best of {args.repeats}"
        )
        print(f"bare torch loop          : {bare_rate:10,.0f} tokens/s  {min(bare_s) / args.steps * 1e3:6.2f} ms/step")
        print(f"Lightning path           : {light_rate:10,.0f} tokens/s  {min(light_s) / args.steps * 1e3:6.2f} ms/step")
        print(f"Lightning, run callbacks : {run_rate:10,.0f} tokens/s  {min(run_s) / args.steps * 1e3:6.2f} ms/step")
        print(f"ratio {light_rate / bare_rate:.3f}")
        print(f"ratio with the run's callbacks {run_rate / bare_rate:.3f}")

    model = bridge()
    with_stop = harvest_rate(model, model_cfg, data_cfg, 16, stop=True)
    without = harvest_rate(model, model_cfg, data_cfg, 16, stop=False)
    print(f"harvest layer {args.layer}/{model.cfg.n_layers} with stop_at_layer   : {with_stop:8,.0f} tokens/s")
    print(f"harvest layer {args.layer}/{model.cfg.n_layers} full forward        : {without:8,.0f} tokens/s")
    print(f"harvest ratio {with_stop / without:.2f}")
    if args.record:
        sae_shape = f"{d} -> {d * args.expansion}, batch {args.batch_size:,}, {args.steps} steps, {args.dtype}"
        rows = [
            {
                "what": f"training step, SAE {sae_shape}",
                "this project (tokens/s)": round(light_rate),
                "against": "bare loop: same kernel, fused Adam",
                "against (tokens/s)": round(bare_rate),
                "ratio": round(light_rate / bare_rate, 3),
            },
            {
                "what": f"training step with the run's callbacks, SAE {sae_shape}",
                "this project (tokens/s)": round(run_rate),
                "against": "bare loop: same kernel, fused Adam",
                "against (tokens/s)": round(bare_rate),
                "ratio": round(run_rate / bare_rate, 3),
            },
            {
                "what": f"harvest to layer {args.layer} of {model.cfg.n_layers}",
                "this project (tokens/s)": round(with_stop),
                "against": "full forward (no stop_at_layer)",
                "against (tokens/s)": round(without),
                "ratio": round(with_stop / without, 2),
            },
        ]
        title = f"Training and harvest throughput, best of {args.repeats} interleaved repeats"
        write_record(args.record, title, rows, machine=machine)


if __name__ == "__main__":
    main()

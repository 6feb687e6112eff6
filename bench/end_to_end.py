"""End to end on one device: harvest-only throughput against full training throughput, from the disk cache and
streamed from the model, for several dictionary sizes, side by side in one run.

    python bench/end_to_end.py                                   # the embedded default, small budgets: a few minutes on a CPU
    python bench/end_to_end.py --steps 200 --batch-size 4096 --harvest-tokens 1000000 --cache-tokens 2000000 \\
        --buffer-tokens 1048576 --dtype tf32                     # on a GPU
    python bench/end_to_end.py --model distilgpt2 --layer 5      # the reference set-up (needs the hub)

Every figure is a training run's own path: the real datamodule (the cache, or the shuffle buffer over the
model's activations), the LightningModule and Lightning's loop, timed after `--warmup-steps` steps (device work
synchronised at both ends). "harvest only" is the model's forward to the hook alone. The SAE's work is counted as
12·d·m FLOPs per token (the dense forward and backward products: 2·d·m each for the encoder and decoder forward,
twice that backward), a fraction of the device's peak for the dtype: from a table of data-sheet peaks for known
GPUs (dense, no sparsity), or a matrix product measured here (CPUs, other GPUs). On a CPU the sparse kernel
skips products once few latents fire, so the fraction there is of dense-equivalent work.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from bench.record import add_record_option, write_record  # noqa: E402
from sae.activations.config import ActivationsConfig  # noqa: E402
from sae.activations.datamodule import ActivationDataModule  # noqa: E402
from sae.activations.harvest import auto_harvest_batch_size, harvest  # noqa: E402
from sae.lm.bridge import lazy_bridge  # noqa: E402
from sae.lm.config import ModelConfig  # noqa: E402
from sae.text.sources import DataConfig  # noqa: E402
from sae.training.config import SAEConfig  # noqa: E402
from sae.training.module import SAETrainingModule  # noqa: E402
from sae.training.run import initial_sae  # noqa: E402

# Data-sheet dense peaks, FLOP/s, by a substring of torch.cuda.get_device_name(): (float32, TF32, bf16).
GPU_PEAKS = {
    "H200": (67e12, 494e12, 989e12),
    "H100 PCIe": (51e12, 378e12, 756e12),
    "H100": (67e12, 494e12, 989e12),
    "A100": (19.5e12, 156e12, 312e12),
    "L40S": (91.6e12, 183e12, 362e12),
}
DTYPES = {"float32": 0, "tf32": 1, "bf16": 2}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_peak(device: torch.device, dtype: str, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of the best of `reps` n×n matrix products here, in the dtype's arithmetic."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")
    try:
        best = float("inf")
        for _ in range(reps + 1):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_float32_matmul_precision(precision)
    return 2 * n**3 / best


def device_peak(device: torch.device, dtype: str) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks[DTYPES[dtype]], f"{name} data-sheet dense {dtype} peak"
    return measured_peak(device, dtype), f"{dtype} matrix product measured here (2048³)"


class _Timer(L.Callback):
    """Seconds from the end of step `warmup` to the end of the last step, device work included."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start: float | None = None
        self.seconds = 0.0

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()
        elif trainer.global_step == trainer.max_steps:
            sync(pl_module.device)
            self.seconds = time.perf_counter() - self.start


def harvest_rate(bridge, model_cfg: ModelConfig, data_cfg: DataConfig, batch_size: int, tokens: int) -> float:
    """Tokens/s of the forward to the hook alone (activations left on the device), after one warm-up forward."""
    device = torch.device(bridge.cfg.device)
    stream = harvest(bridge, model_cfg, data_cfg, batch_size, on_device=True)
    next(stream)
    sync(device)
    start, seen = time.perf_counter(), 0
    for chunk in stream:
        seen += len(chunk)
        if seen >= tokens:
            break
    sync(device)
    return seen / (time.perf_counter() - start)


def training_rate(args, model_cfg, data_cfg, act_cfg, bridge, expansion: int, sample: torch.Tensor) -> float:
    """Tokens/s of Lightning training through the run's datamodule (cached or streamed per `act_cfg.cache`)."""
    steps = args.warmup_steps + args.steps
    cfg = SAEConfig(
        expansion=expansion,
        batch_size=args.batch_size,
        tokens=args.batch_size * steps,
        dtype="bf16" if args.dtype == "bf16" else "float32",
    )
    torch.manual_seed(0)
    sae = initial_sae(cfg, sample)
    precision = "high" if args.dtype == "tf32" else "highest"
    module = SAETrainingModule(sae, cfg, log_every_n_steps=50, float32_matmul_precision=precision)
    datamodule = ActivationDataModule(model_cfg, data_cfg, act_cfg, cfg.batch_size, cfg.total_steps, 0, bridge)
    timer = _Timer(args.warmup_steps)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        precision="bf16-mixed" if args.dtype == "bf16" else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    return args.steps * args.batch_size / timer.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2")
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--hook", default="hook_mlp_out")
    ap.add_argument("--model-dtype", default="float32", help="model.dtype: float32, bfloat16, float16 or auto")
    ap.add_argument("--data", default="wiki_offline", help="wiki_offline, or hf (with --data-path)")
    ap.add_argument("--data-path", default=None)
    ap.add_argument("--context-length", type=int, default=128)
    ap.add_argument("--expansions", type=int, nargs="+", default=[8, 32, 256])
    ap.add_argument("--batch-size", type=int, default=512, help="the embedded default's batch")
    ap.add_argument("--warmup-steps", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16, help="timed steps after the warm-up")
    ap.add_argument("--dtype", choices=list(DTYPES), default="float32", help="the SAE's: float32, tf32 products, bf16 autocast")
    ap.add_argument("--harvest-batch-size", type=int, default=None, help="contexts per forward (default: sized to the device)")
    ap.add_argument("--harvest-tokens", type=int, default=4096, help="tokens timed for harvest only")
    ap.add_argument("--cache-tokens", type=int, default=16384, help="the cache the cached runs read")
    ap.add_argument("--buffer-tokens", type=int, default=8192, help="the streamed runs' shuffle buffer")
    ap.add_argument("--accelerator", default="auto")
    add_record_option(ap)
    args = ap.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one table, not each fit's banner
    warnings.filterwarnings("ignore", module="lightning")
    machine = describe()
    print(machine)

    model_cfg = ModelConfig(name=args.model, alias="bench", layer=args.layer, hook=args.hook, dtype=args.model_dtype)
    if args.data == "wiki_offline":
        data_cfg = DataConfig(source="wiki_offline", alias="wiki", context_length=args.context_length)
    else:
        data_cfg = DataConfig(
            source=args.data, alias="bench", path=args.data_path, context_length=args.context_length, streaming=True
        )
    bridge = lazy_bridge(model_cfg)
    model = bridge()
    device = torch.device(model.cfg.device)
    contexts = args.harvest_batch_size or auto_harvest_batch_size(model, args.context_length)
    dtype_name = str(next(model.parameters()).dtype).removeprefix("torch.")
    harvest_tps = harvest_rate(model, model_cfg, data_cfg, contexts, args.harvest_tokens)

    with tempfile.TemporaryDirectory() as tmp:
        common = {"harvest_batch_size": contexts, "buffer_tokens": args.buffer_tokens, "shard_tokens": max(8192, args.batch_size)}
        cached = ActivationsConfig(cache=True, cache_dir=tmp, n_tokens=args.cache_tokens, **common)
        streamed = ActivationsConfig(cache=False, cache_dir=tmp, **common)
        probe = ActivationDataModule(model_cfg, data_cfg, cached, args.batch_size, 1, 0, bridge)
        sample = probe.init_sample()  # builds the cache (not timed)
        d = sample.shape[1]
        peak, peak_source = device_peak(device, args.dtype)
        print(
            f"model {args.model} layer {args.layer} {args.hook} (d {d:,}, {dtype_name}) on {device}, contexts of "
            f"{args.context_length}, {contexts} per forward; SAE {args.dtype}, batch {args.batch_size:,}, "
            f"{args.warmup_steps} warm-up + {args.steps} timed steps; cache {args.cache_tokens:,} tokens, "
            f"shuffle buffer {args.buffer_tokens:,} tokens"
        )
        print(f"peak: {peak / 1e12:,.3g} TFLOP/s ({peak_source})")
        print(f"harvest only: {harvest_tps:,.0f} tokens/s")
        print(
            f"{'expansion':>9} {'latents':>9} {'cached tok/s':>13} {'streamed tok/s':>15} {'streamed/cached':>16} "
            f"{'streamed/harvest':>17} {'SAE TFLOP/s':>12} {'of peak':>8}"
        )
        rows = []
        for expansion in args.expansions:
            m = d * expansion
            cached_tps = training_rate(args, model_cfg, data_cfg, cached, bridge, expansion, sample)
            streamed_tps = training_rate(args, model_cfg, data_cfg, streamed, bridge, expansion, sample)
            flops = 12 * d * m * cached_tps
            print(
                f"{expansion:>8}x {m:>9,} {cached_tps:>13,.0f} {streamed_tps:>15,.0f} {streamed_tps / cached_tps:>16.3f} "
                f"{streamed_tps / harvest_tps:>17.3f} {flops / 1e12:>12.3g} {flops / peak:>8.1%}",
                flush=True,
            )
            rows.append(
                {
                    "expansion": f"{expansion}x",
                    "latents": m,
                    "cached (tokens/s)": round(cached_tps),
                    "streamed (tokens/s)": round(streamed_tps),
                    "harvest only (tokens/s)": round(harvest_tps),
                    "streamed / harvest": round(streamed_tps / harvest_tps, 3),
                    "SAE TFLOP/s": float(f"{flops / 1e12:.3g}"),
                    "of peak": f"{flops / peak:.1%}",
                }
            )
    if args.record:
        title = f"End to end on {device}: {args.model} layer {args.layer} {args.hook}, SAE {args.dtype}, batch {args.batch_size}"
        write_record(args.record, title, rows, notes=f"peak: {peak / 1e12:,.3g} TFLOP/s ({peak_source})", machine=machine)


if __name__ == "__main__":
    main()

"""The run's plan, stated in one line at start-up: its tokens and steps, the disk its activation cache needs
beside the disk that is free, and, once a short warm-up has been measured, the time it will take.

A billion-token run should say before it starts that its cache would not fit (a 2B-token cache of a 768-wide
hook is ~3 TB: stream it instead), and within its first minute how long it will run, from its own measured
throughput rather than a guess.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from sae.activations.cache import cache_key
from sae.lm.bridge import configured_hook_width
from sae.training.config import TrainConfig


@dataclass(frozen=True)
class RunPlan:
    steps: int
    batch_size: int
    cached: bool  # activations.cache: train from a disk cache rather than stream from the model
    cache_tokens: int  # activations.n_tokens
    width: int | None  # d of the hooked activation; None when it cannot be known before the model loads
    bytes_per_value: int  # of the cache's dtype
    cache_dir: Path
    free_disk: int | None  # bytes free where the cache goes; None when that cannot be read
    cache_ready: bool  # a finished cache for this run's key exists

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size

    def cache_bytes(self, tokens: int) -> int | None:
        """Disk for `tokens` cached activations: tokens × d × bytes per value."""
        return None if self.width is None else tokens * self.width * self.bytes_per_value

    def line(self) -> str:
        head = f"plan: {self.tokens:,} training tokens in {self.steps:,} steps of {self.batch_size:,}"
        free = format_bytes(self.free_disk) if self.free_disk is not None else "unknown"
        disk = f"disk free in {self.cache_dir}: {free}"
        if not self.cached:
            return (
                f"{head}; activations streamed from the model, no disk cache (a cache of them: {self._size(self.tokens)}; {disk})"
            )
        passes = f"{self.tokens / self.cache_tokens:.3g} passes over the cache"
        if self.cache_ready:
            return f"{head}, {passes}; the cache ({self._size(self.cache_tokens)}) is harvested already; {disk}"
        need = self.cache_bytes(self.cache_tokens)
        short = need is not None and self.free_disk is not None and need > self.free_disk
        fix = (
            ": it does not fit; free space there, set activations.cache_dir elsewhere, or stream with activations.cache=false"
            if short
            else ""
        )
        return f"{head}, {passes}; cache to harvest: {self._size(self.cache_tokens)}; {disk}{fix}"

    def _size(self, tokens: int) -> str:
        need = self.cache_bytes(tokens)
        width = "d (unknown until the model loads)" if self.width is None else f"{self.width:,}"
        size = "" if need is None else f" = {format_bytes(need)}"
        return f"{tokens:,} tokens × {width} × {self.bytes_per_value} bytes{size}"


def run_plan(cfg: TrainConfig) -> RunPlan:
    """The plan of `cfg`'s run, read without loading the model (its width from the model's config or the cache)."""
    act = cfg.activations
    cache_dir = Path(act.cache_dir)
    meta = cache_dir / cache_key(cfg.model, cfg.data, act) / "meta.json"
    ready = act.cache and meta.exists()
    width = json.loads(meta.read_text())["d"] if ready else configured_hook_width(cfg.model)
    return RunPlan(
        steps=cfg.sae.total_steps,
        batch_size=cfg.sae.batch_size,
        cached=act.cache,
        cache_tokens=act.n_tokens,
        width=width,
        bytes_per_value=np.dtype(act.dtype).itemsize,
        cache_dir=cache_dir,
        free_disk=free_disk(cache_dir),
        cache_ready=ready,
    )


def free_disk(path: Path) -> int | None:
    """Bytes free on the file system that holds `path` (or would: its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


@dataclass
class WarmupClock:
    """Times the steps after a warm-up and, once it has measured enough, says when the run will end.

    The first `skip_steps` steps of a fit (start-up, first allocations, a filling shuffle buffer) are not
    timed; then at least `measure_steps` steps and `measure_seconds` seconds are, so that a streamed run's
    bursts of harvesting are averaged in.
    """

    total_steps: int
    batch_size: int
    skip_steps: int = 10
    measure_steps: int = 30
    measure_seconds: float = 10.0
    _first_step: int | None = None
    _start: tuple[int, float] | None = None
    done: bool = False

    def step(self, global_step: int, now: float) -> str | None:
        """Call after each optimizer step (monotonic `now`, seconds); returns the estimate's line once."""
        if self.done:
            return None
        if self._first_step is None:
            self._first_step = global_step
        if self._start is None:
            if global_step - self._first_step >= self.skip_steps:
                self._start = (global_step, now)
            return None
        steps, seconds = global_step - self._start[0], now - self._start[1]
        if global_step >= self.total_steps or (steps >= self.measure_steps and seconds >= self.measure_seconds):
            self.done = True
            if steps > 0 and seconds > 0:
                return eta_line(steps, seconds, self._start[0], global_step, self.total_steps, self.batch_size)
        return None


def eta_line(steps: int, seconds: float, from_step: int, at_step: int, total_steps: int, batch_size: int) -> str:
    rate = steps / seconds
    left = max(0, total_steps - at_step)
    eta = left / rate
    until = (datetime.now() + timedelta(seconds=eta)).strftime("%Y-%m-%d %H:%M")
    return (
        f"plan: measured {rate:,.3g} steps/s ({rate * batch_size:,.0f} tokens/s) over steps {from_step + 1:,}-{at_step:,}; "
        f"{left:,} steps left: about {format_duration(eta)} (until {until})"
    )


def format_bytes(n: float) -> str:
    """Decimal units, three significant figures: 461 MB, 3.07 TB."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i = 0
    while float(f"{n:.3g}") >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{int(n)} B" if i == 0 else f"{n:.3g} {units[i]}"


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {m:02d} min"
    days, h = divmod(hours, 24)
    return f"{days} d {h} h"

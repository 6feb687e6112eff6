"""Dead-neuron resampling (Anthropic 2023) on a real SAE, real Adam and a real Lightning trainer."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from callbacks.resampling import NeuronResamplingCallback
from sae.architectures import ReLUSAE as SparseAutoencoder
from sae.training.config import ResampleConfig, SAEConfig
from sae.training.module import SAETrainingModule
from sae.training.resampling import ResampleSchedule, min_dead_window_tokens, resample_schedule, sample_by_loss_squared

D, N, BATCH, RESAMPLE_AT = 32, 64, 64, 6
DEAD = torch.tensor([3, 17, 40, 63])


def test_schedule_is_in_tokens_and_never_shorter_than_the_honest_window():
    floor = min_dead_window_tokens(1e-5, 0.05)
    assert (1 - 1e-5) ** floor <= 0.05 < (1 - 1e-5) ** (floor - 1)
    assert floor == 299_572
    # The paper's own run: 8.2B tokens at batch 8,192 gives its steps and its 12,500-step window, no note.
    paper = resample_schedule(ResampleConfig(), total_steps=1_000_000, batch_size=8192)
    assert paper.steps == (25_000, 50_000, 75_000, 100_000) and paper.dead_window == 12_500 and paper.note == ""
    assert paper.window_tokens == 102_400_000
    # The embedded default (1M tokens at batch 512): the scaled window would be 12,500 tokens; it is
    # raised to the floor, and each event waits for a full window after the previous one.
    short = resample_schedule(ResampleConfig(), total_steps=1953, batch_size=512)
    assert short.dead_window == math.ceil(floor / 512) == 586 and short.window_tokens == 586 * 512
    assert short.steps == (586, 1172, 1758)
    assert "too few" in short.note and "3 of 4 events" in short.note and "\n" not in short.note
    # Too short for even one window: no event at all, said at start-up.
    tiny = resample_schedule(ResampleConfig(), total_steps=200, batch_size=256)
    assert tiny.steps == () and "0 of 4 events" in tiny.note
    unscaled = resample_schedule(ResampleConfig(scale_to_run=False), total_steps=60_000, batch_size=8192)
    assert unscaled.steps == (25_000, 50_000) and unscaled.dead_window == 12_500


def test_sampling_never_picks_inputs_the_sae_reconstructs_perfectly():
    sae = SparseAutoencoder(D, N)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.fill_(-1.0)  # x = b_dec encodes to f = 0 and decodes to b_dec: loss exactly 0
    perfect = sae.b_dec.detach().repeat(500, 1)
    bad = torch.randn(7, D) * 5
    batches = [torch.cat([perfect[:250], bad[:3]]), torch.cat([perfect[250:], bad[3:]])]
    picked = sample_by_loss_squared(
        sae, batches, n_samples=7, n_inputs=10_000, l1_coefficient=1e-3, generator=torch.Generator().manual_seed(0)
    )
    assert sorted(map(tuple, picked.tolist())) == sorted(map(tuple, bad.tolist()))


class _Snapshot(L.Callback):
    """Copies weights and Adam moments just before the resampling callback runs at the same step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != RESAMPLE_AT:
            return
        sae, state = pl_module.sae, trainer.optimizers[0].state
        self.params = {k: p.detach().clone() for k, p in sae.named_parameters()}
        self.moments = {k: {m: state[p][m].clone() for m in ("exp_avg", "exp_avg_sq")} for k, p in sae.named_parameters()}


@pytest.fixture(scope="module")
def resampled():
    torch.manual_seed(0)
    mean = torch.randn(D)
    data = [mean + torch.randn(BATCH, D) for _ in range(RESAMPLE_AT)]
    sae = SparseAutoencoder(D, N)
    with torch.no_grad():
        sae.b_enc[DEAD] = -1e4  # these features can never fire: dead from the start
    cfg = SAEConfig(batch_size=BATCH, tokens=BATCH * 100, lr=1e-3)
    schedule = ResampleSchedule(steps=(RESAMPLE_AT,), dead_window=4, window_tokens=4 * BATCH, n_inputs=2048, note="")
    module = SAETrainingModule(sae, cfg, log_every_n_steps=10_000)

    def scoring_batches(step):
        g = torch.Generator().manual_seed(step)
        return (mean + torch.randn(256, D, generator=g) for _ in range(8))

    snapshot = _Snapshot()
    resampler = NeuronResamplingCallback(schedule, scoring_batches)
    trainer = L.Trainer(
        max_steps=RESAMPLE_AT,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[snapshot, resampler],
        accelerator="cpu",
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
    return module, trainer.optimizers[0], snapshot, resampler, mean


def test_resampling_revives_exactly_the_dead_features(resampled):
    module, _, snapshot, resampler, mean = resampled
    assert resampler.history == [{"step": RESAMPLE_AT, "resampled": len(DEAD), "window_tokens": 4 * BATCH}]
    sae = module.sae
    assert torch.all(sae.b_enc[DEAD] == 0)
    torch.testing.assert_close(sae.W_dec[DEAD].norm(dim=1), torch.ones(len(DEAD)))
    alive = torch.ones(N, dtype=torch.bool)
    alive[DEAD] = False
    expected_norm = 0.2 * snapshot.params["W_enc"][:, alive].norm(dim=0).mean()
    torch.testing.assert_close(sae.W_enc[:, DEAD].norm(dim=0), expected_norm.repeat(len(DEAD)))
    torch.testing.assert_close(sae.W_enc[:, DEAD].T / expected_norm, sae.W_dec[DEAD])  # same direction
    with torch.no_grad():
        f = sae.encode(mean + torch.randn(4096, D))
    assert (f[:, DEAD] > 0).any(dim=0).all(), "resampled features should fire again"
    assert torch.all(resampler.steps_since_fired[DEAD] == 0)


def test_adam_moments_reset_only_at_resampled_indices(resampled):
    module, optimizer, snapshot, _, _ = resampled
    alive = torch.ones(N, dtype=torch.bool)
    alive[DEAD] = False
    index = {"W_enc": (slice(None), DEAD), "W_dec": (DEAD,), "b_enc": (DEAD,)}
    alive_index = {"W_enc": (slice(None), alive), "W_dec": (alive,), "b_enc": (alive,)}
    for name, p in module.sae.named_parameters():
        for m in ("exp_avg", "exp_avg_sq"):
            now, before = optimizer.state[p][m], snapshot.moments[name][m]
            if name in index:
                assert torch.all(now[index[name]] == 0), (name, m)
                assert torch.equal(now[alive_index[name]], before[alive_index[name]]), (name, m)
                assert before[alive_index[name]].abs().sum() > 0  # there was state to keep
            else:  # b_dec belongs to no feature
                assert torch.equal(now, before), (name, m)
        if name in index:
            assert torch.equal(p.detach()[alive_index[name]], snapshot.params[name][alive_index[name]]), name
        else:
            assert torch.equal(p.detach(), snapshot.params[name]), name


def test_a_rare_healthy_feature_is_kept_and_only_the_silent_one_is_resampled():
    """A synthetic stream: feature 0 fires on a marker present at density 1e-4, feature 1 never fires,
    features 2 and 3 fire on every token. With the default config's honest window only feature 1 goes."""
    d, n, batch, steps, density = 8, 4, 16_384, 60, 1e-4
    sae = SparseAutoencoder(d, n)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 0] = 1.0  # feature 0 reads the marker coordinate
        sae.W_enc[1:, 2:] = 0.1
        sae.b_enc.copy_(torch.tensor([-0.5, -1e4, 0.5, 0.5]))
        sae.b_dec.zero_()
    cfg = SAEConfig(batch_size=batch, tokens=batch * steps, lr=1e-9)  # a tiny lr: the firing pattern stays as built
    schedule = resample_schedule(cfg.resample, cfg.total_steps, batch)
    assert schedule.steps == (19, 38, 57) and schedule.window_tokens >= 299_572
    g = torch.Generator().manual_seed(0)

    def stream():
        for _ in range(steps):
            x = torch.rand(batch, d, generator=g) + 0.5
            x[:, 0] = (torch.rand(batch, generator=g) < density).float()
            yield x

    counts = torch.zeros(n, dtype=torch.long)

    class Count(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            counts.add_(outputs["fire_counts"].cpu())

    module = SAETrainingModule(sae, cfg, log_every_n_steps=10_000)
    resampler = NeuronResamplingCallback(
        schedule, lambda step: (torch.rand(1024, d, generator=torch.Generator().manual_seed(step)) for _ in range(4))
    )
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Count(), resampler],
        accelerator="cpu",
    )
    trainer.fit(module, train_dataloaders=DataLoader(list(stream()), batch_size=None))
    fired_0 = int(counts[0])
    assert 0.5 * density * batch * steps < fired_0 < 2 * density * batch * steps  # it really fired at ~1e-4
    assert [h["resampled"] for h in resampler.history] == [1, 0, 0]
    assert resampler.history[0]["window_tokens"] == schedule.window_tokens
    assert abs(float(sae.b_enc[1])) < 1e-4  # feature 1 was re-initialised (from -1e4 to 0)
    assert abs(float(sae.b_enc[0]) + 0.5) < 1e-3  # feature 0 was not

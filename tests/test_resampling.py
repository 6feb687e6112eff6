"""Dead-neuron resampling (METHOD §2) on a real SAE, real Adam and a real Lightning trainer."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from callbacks.resampling import NeuronResamplingCallback
from sae.config import ResampleConfig, SAEConfig
from sae.architectures import ReLUSAE as SparseAutoencoder
from sae.module import SAETrainingModule
from sae.resampling import resample_schedule, sample_by_loss_squared

D, N, BATCH, RESAMPLE_AT = 32, 64, 64, 6
DEAD = torch.tensor([3, 17, 40, 63])


def test_schedule_scales_the_papers_steps_to_short_runs():
    s = resample_schedule(ResampleConfig(), total_steps=4_883)  # the embedded default: 5M tokens at batch 1024
    assert s.steps == (122, 244, 366, 488)
    assert s.dead_window == 61
    unscaled = resample_schedule(ResampleConfig(scale_to_run=False), total_steps=60_000)
    assert unscaled.steps == (25_000, 50_000) and unscaled.dead_window == 12_500


def test_sampling_never_picks_inputs_the_sae_reconstructs_perfectly():
    sae = SparseAutoencoder(D, N)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.fill_(-1.0)  # x = b_dec encodes to f = 0 and decodes to b_dec: loss exactly 0
    perfect = sae.b_dec.detach().repeat(500, 1)
    bad = torch.randn(7, D) * 5
    batches = [torch.cat([perfect[:250], bad[:3]]), torch.cat([perfect[250:], bad[3:]])]
    picked = sample_by_loss_squared(sae, batches, n_samples=7, n_inputs=10_000, l1_coefficient=1e-3,
                                    generator=torch.Generator().manual_seed(0))
    assert sorted(map(tuple, picked.tolist())) == sorted(map(tuple, bad.tolist()))


class _Snapshot(L.Callback):
    """Copies weights and Adam moments just before the resampling callback runs at the same step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != RESAMPLE_AT:
            return
        sae, state = pl_module.sae, trainer.optimizers[0].state
        self.params = {k: p.detach().clone() for k, p in sae.named_parameters()}
        # The module renormalises decoder rows after every step (after the callbacks): do the same here.
        self.params["W_dec"] /= self.params["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.moments = {k: {m: state[p][m].clone() for m in ("exp_avg", "exp_avg_sq")} for k, p in sae.named_parameters()}


@pytest.fixture(scope="module")
def resampled():
    torch.manual_seed(0)
    mean = torch.randn(D)
    data = [mean + torch.randn(BATCH, D) for _ in range(RESAMPLE_AT)]
    sae = SparseAutoencoder(D, N)
    with torch.no_grad():
        sae.b_enc[DEAD] = -1e4  # these features can never fire: dead from the start
    cfg = SAEConfig(batch_size=BATCH, tokens=BATCH * 100, lr=1e-3,
                    resample=ResampleConfig(steps=[RESAMPLE_AT], scale_to_run=False, dead_window=4, n_inputs=2048))
    module = SAETrainingModule(sae, cfg, log_every_n_steps=10_000)

    def scoring_batches(seed):
        g = torch.Generator().manual_seed(seed)
        return (mean + torch.randn(256, D, generator=g) for _ in range(8))

    snapshot = _Snapshot()
    resampler = NeuronResamplingCallback(cfg.resample, cfg.total_steps, scoring_batches)
    trainer = L.Trainer(max_steps=RESAMPLE_AT, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[snapshot, resampler], accelerator="cpu")
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
    return module, trainer.optimizers[0], snapshot, resampler, mean


def test_resampling_revives_exactly_the_dead_features(resampled):
    module, _, snapshot, resampler, mean = resampled
    assert resampler.history == [{"step": RESAMPLE_AT, "resampled": len(DEAD)}]
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
    assert torch.all(module.steps_since_fired[DEAD] == 0)


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

"""The trainer: exact resume, NaN detection, early stopping, schedules, batch order."""

from __future__ import annotations

import math

import pytest
import torch

from common.flows.layers import ElementwiseAffine
from common.run.config import ConfigError, ScheduleConfig
from common.run.loop import NonFiniteLossError, StoppedAt, lr_factor, train
from common.run.objectives import MaximumLikelihood, batch_indices
from papers.nice.model import build_model
from papers.nice.train import NiceConfig


def train_and_evaluate(cfg, build_model, workdir, **kwargs):
    return train(cfg, MaximumLikelihood(cfg, build_model), workdir, **kwargs)


def make_cfg(data_root, **train):
    train = {"batch_size": 32, "max_steps": 40, "eval_every": 10, "log_every": 5,
             "checkpoint_every": 10, "num_samples": 4} | train  # fmt: skip
    return NiceConfig.model_validate(
        {
            "paper": "nice",
            "experiment": "digits_test",
            "scale": "smoke",
            "data": {"name": "digits", "root": str(data_root)},
            "model": {"name": "nice", "num_couplings": 2, "hidden_features": 16, "num_hidden": 1},
            "train": train,
        }
    )


def test_resumed_run_is_identical_to_uninterrupted(data_root, tmp_path):
    cfg = make_cfg(data_root)
    full = train_and_evaluate(cfg, build_model, tmp_path / "a", progress=False)
    partial = train_and_evaluate(cfg, build_model, tmp_path / "b", stop_after=17, progress=False)
    assert partial == StoppedAt(17)
    torch.manual_seed(999)  # a different global RNG state must not matter after resuming
    resumed = train_and_evaluate(cfg, build_model, tmp_path / "b", progress=False)

    def results(out):  # everything but wall-clock time
        return {k: v for k, v in out.metrics.items() if "wall_time" not in k}

    assert results(resumed) == results(full) and len(results(full)) == 6
    assert resumed.steps == full.steps == 40
    a = torch.load(tmp_path / "a/checkpoints/best.pt", weights_only=True)
    b = torch.load(tmp_path / "b/checkpoints/best.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b/figures/samples.png").exists()


def test_resume_refuses_a_different_config(data_root, tmp_path):
    cfg = make_cfg(data_root)
    train_and_evaluate(cfg, build_model, tmp_path, stop_after=5, progress=False)
    changed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 80})})
    with pytest.raises(ConfigError, match="different config"):
        train_and_evaluate(changed, build_model, tmp_path, progress=False)


def test_different_seeds_give_different_runs(data_root, tmp_path):
    cfg = make_cfg(data_root, max_steps=10)
    a = train_and_evaluate(cfg, build_model, tmp_path / "a", progress=False)
    b = train_and_evaluate(cfg.model_copy(update={"seed": 1}), build_model, tmp_path / "b",
                           progress=False)  # fmt: skip
    assert a.metrics["test/nll"] != b.metrics["test/nll"]


class ExplodesAfter(ElementwiseAffine):
    """Returns NaN once it has been called ``after`` times (simulates divergence)."""

    def __init__(self, d: int, after: int) -> None:
        super().__init__(d)
        self.after, self.calls = after, 0

    def forward(self, x, context=None):
        self.calls += 1
        z, ldj = super().forward(x, context)
        return (z * math.nan, ldj) if self.calls > self.after else (z, ldj)


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(data_root, tmp_path):
    cfg = make_cfg(data_root, eval_every=100, checkpoint_every=10)

    def exploding_model(model_cfg, data):
        flow = build_model(model_cfg, data)
        flow.transform.layers.append(ExplodesAfter(data.num_dims, after=25))
        return flow

    with pytest.raises(NonFiniteLossError, match=r"step 25.*last good checkpoint"):
        train_and_evaluate(cfg, exploding_model, tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert ckpt["state"]["step"] == 20
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_early_stopping_on_plateau(data_root, tmp_path):
    cfg = make_cfg(data_root, patience=2, optim={"lr": 1e-12})  # validation NLL cannot improve
    out = train_and_evaluate(cfg, build_model, tmp_path, progress=False)
    assert out.stopped_early and out.steps == 30 and out.best_step == 10


def test_batch_indices_cover_each_epoch_once():
    seen = torch.cat([batch_indices(100, 25, seed=3, step=s) for s in range(4)])
    assert sorted(seen.tolist()) == list(range(100))
    assert torch.equal(batch_indices(100, 25, 3, 5), batch_indices(100, 25, 3, 5))
    assert not torch.equal(batch_indices(100, 25, 3, 0), batch_indices(100, 25, 3, 4))


def test_learning_rate_schedules():
    warm = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(warm, 0, 110) == pytest.approx(0.1)
    assert lr_factor(warm, 10, 110) == pytest.approx(1.0)
    assert lr_factor(warm, 110, 110) == pytest.approx(0.1)
    assert lr_factor(ScheduleConfig(name="exponential", gamma=0.5), 3, 10) == 0.125
    assert lr_factor(ScheduleConfig(), 7, 10) == 1.0


def glow_cfg(data_root, **train):
    from papers.glow.train import GlowConfig

    train = {"batch_size": 32, "max_steps": 20, "eval_every": 5, "log_every": 5,
             "checkpoint_every": 10, "num_samples": 4} | train  # fmt: skip
    return GlowConfig.model_validate({
        "paper": "glow", "experiment": "digits_test", "scale": "smoke",
        "data": {"name": "digits", "root": str(data_root)},
        "model": {"name": "glow", "num_levels": 2, "steps_per_level": 1, "hidden_channels": 8},
        "train": train,
    })  # fmt: skip


def test_resume_with_polyak_averaging_and_flips_is_exact(data_root, tmp_path):
    """Polyak averaging (the Glow authors' option) and random flips resume exactly too; the
    averaged weights, not the raw ones, are what is evaluated and kept as best.pt."""
    from papers.glow.model import build_model as build_glow_model

    cfg = glow_cfg(data_root, polyak_decay=0.9, hflip=True, random_shift=1,
                   sample_temperatures=[0.5, 1.0])  # fmt: skip
    full = train_and_evaluate(cfg, build_glow_model, tmp_path / "a", progress=False)
    train_and_evaluate(cfg, build_glow_model, tmp_path / "b", stop_after=7, progress=False)
    resumed = train_and_evaluate(cfg, build_glow_model, tmp_path / "b", progress=False)
    assert resumed.metrics["test/nll"] == full.metrics["test/nll"]
    last = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)
    best = torch.load(tmp_path / "a/checkpoints/best.pt", weights_only=True)
    raw, averaged = last["model"], last["polyak"]
    key = next(k for k in raw if k.endswith("log_scale"))
    assert not torch.equal(raw[key], averaged[f"module.{key}"])  # the average lags the raw
    # best.pt holds the average as it was at the best step: a run stopped there has it
    train_and_evaluate(cfg, build_glow_model, tmp_path / "c", stop_after=full.best_step,
                       progress=False)  # fmt: skip
    at_best = torch.load(tmp_path / "c/checkpoints/last.pt", weights_only=True)["polyak"]
    assert torch.equal(best[key], at_best[f"module.{key}"])
    assert not torch.equal(best[key], at_best.get(key, raw[key]))
    figures = {p.name for p in (tmp_path / "a/figures").iterdir()}
    assert {"samples.png", "samples_T0.5.png", "curves.png"} <= figures


def test_random_shift_translates_each_image_and_repeats_edges():
    from common.run.objectives import random_shift

    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.uint8).reshape(2, 1, 4, 5)
    torch.manual_seed(0)
    out = random_shift(x, 2)
    torch.manual_seed(0)
    dy, dx = torch.randint(-2, 3, (2, 2))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for b in range(2):
        for i in range(4):
            for j in range(5):  # pixel (i, j) shows (i − dy, j − dx), clamped to the image
                src = x[b, 0, min(max(i - dy[b], 0), 3), min(max(j - dx[b], 0), 4)]
                assert out[b, 0, i, j] == src
    assert (dy != 0).any() or (dx != 0).any()  # the seed shifts something: not vacuous
    assert torch.equal(random_shift(x, 0), x)


def test_flips_need_images(tmp_path, data_root):
    cfg = make_cfg(data_root, hflip=True).model_copy(
        update={"data": make_cfg(data_root).data.model_copy(update={"name": "moons"})})  # fmt: skip
    with pytest.raises(ConfigError, match="hflip needs image data"):
        train_and_evaluate(cfg, build_model, tmp_path, progress=False)


def test_penalty_enters_the_loss(data_root):
    """RealNVP's L2 on weight-norm scales is added to the NLL the optimiser sees."""
    from common.data import load_dataset
    from papers.realnvp.model import RealNVPModel, build_realnvp

    data = load_dataset("digits", data_root)
    torch.manual_seed(0)
    flow = build_realnvp(RealNVPModel(num_blocks=1, hidden_channels=4, scale_l2=0.1), data)
    scales = [g for m in flow.modules() if hasattr(m, "weight_scales") for g in m.weight_scales()]
    assert torch.allclose(flow.penalty(), 0.1 * sum(g.pow(2).sum() for g in scales))
    no_penalty = build_realnvp(RealNVPModel(num_blocks=1, hidden_channels=4, scale_l2=0.0), data)
    assert no_penalty.penalty().item() == 0.0

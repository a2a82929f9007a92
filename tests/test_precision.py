"""bfloat16 networks, float32 flow (common.flows.precision): the log-determinant under
``network_autocast(torch.bfloat16)`` matches float32.

Tolerance. On CIFAR-shaped batches (3×32×32, D = 3072), with every parameter perturbed so
that the conditioners are far from their zero initialisation, the ldj differs from float32 by
at most 5e-5 nats per dimension for Glow and 4e-4 for RealNVP (measured): bfloat16 rounds the
networks' outputs to 2⁻⁹ relative, and the ldj sums thousands of them in float32. Asserted: 1e-3
nats per dimension (0.0014 bits/dim), with the ldj, z and every layer's ldj in float32. The
log-density as a whole moves more (0.03–0.08 nats/dim here, through z's shift t, which enters
the base density as z·Δz): bfloat16 training optimises a slightly different function, which is
why every validation and test score is computed in float32.
"""

from __future__ import annotations

import pytest
import torch

from common.flows.bijector import Bijector
from common.flows.precision import network_autocast, network_dtype
from common.flows.testing import perturb_parameters
from papers.glow.model import GlowModel, build_glow
from papers.realnvp.model import RealNVPModel, build_realnvp
from tests.test_realnvp_glow import fake_dataset

TOLERANCE = 1e-3  # nats per dimension; see the module docstring

MODELS = {
    "glow": lambda data: build_glow(
        GlowModel(num_levels=3, steps_per_level=4, hidden_channels=64), data
    ),  # fmt: skip
    "realnvp": lambda data: build_realnvp(
        RealNVPModel(num_scales=2, num_blocks=2, hidden_channels=32), data
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_networks_keep_the_log_determinant_in_float32(name):
    data = fake_dataset((3, 32, 32), levels=256, n=8)
    flow = MODELS[name](data)
    y, _ = flow.dequantize(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8))
    flow.train()
    flow.transform(y)  # ActNorm's data-dependent initialisation, batch norm's statistics
    flow.eval()
    perturb_parameters(flow, 0.05, seed=1)
    z32, ldj32 = flow.transform(y)
    layer_ldjs = []  # the dtype of every layer's ldj, nested layers included
    hooks = [m.register_forward_hook(lambda m, args, out: layer_ldjs.append(out[1].dtype))
             for m in flow.transform.modules() if isinstance(m, Bijector)]  # fmt: skip
    with network_autocast(torch.bfloat16):
        assert network_dtype() is torch.bfloat16
        z16, ldj16 = flow.transform(y)
    for hook in hooks:
        hook.remove()
    assert network_dtype() is None  # restored after the block
    assert len(layer_ldjs) > 20
    assert ldj16.dtype == z16.dtype == torch.float32
    assert set(layer_ldjs) == {torch.float32}
    error = (ldj16 - ldj32).abs().max().item() / y[0].numel()
    assert error < TOLERANCE, f"{error:.2e} nats/dim"
    assert error > 0  # the networks did run in bfloat16
    assert (z16 - z32).abs().max() > 0


# --- in the training loop ---------------------------------------------------------------------


def _glow_cfg(data_root, **train):
    from papers.glow.config import CONFIG

    return CONFIG.model_validate({
        "paper": "glow", "experiment": "digits_test", "scale": "smoke",
        "data": {"name": "digits", "root": str(data_root)},
        "model": {"name": "glow", "num_levels": 2, "steps_per_level": 2, "hidden_channels": 8},
        "train": {"batch_size": 32, "max_steps": 6, "eval_every": 3, "log_every": 3,
                  "num_samples": 0} | train,
    })  # fmt: skip


class _Recording:
    """Wraps an objective to record what its loss and validation ran under. Each batch
    carries an extra 3-channel probe tensor (the digits have one channel, which is contiguous
    in both memory formats) whose layout the loss records, then drops."""

    def __init__(self, objective):
        self.objective, self.seen = objective, []
        batch, loss, validate = objective.batch, objective.loss, objective.validate

        def probed_batch(model, step):
            return (*batch(model, step), torch.zeros(2, 3, 4, 4))

        def recording_loss(model, probed):
            *real, probe = probed
            nhwc = probe.is_contiguous(memory_format=torch.channels_last)
            self.seen.append(("loss", network_dtype(), nhwc))
            return loss(model, tuple(real))

        def recording_validate(model):
            self.seen.append(("validate", network_dtype(), None))
            return validate(model)

        objective.batch, objective.loss = probed_batch, recording_loss
        objective.validate = recording_validate


@pytest.mark.parametrize(("precision", "channels_last"), [("bf16", True), ("float32", False)])
def test_training_runs_its_networks_in_bf16_and_evaluates_in_float32(
    data_root, tmp_path, precision, channels_last
):
    from common.run.loop import train
    from common.run.objectives import MaximumLikelihood
    from papers.glow.config import build_model

    cfg = _glow_cfg(data_root, precision=precision, channels_last=channels_last)
    recording = _Recording(MaximumLikelihood(cfg, build_model))
    summary = train(cfg, recording.objective, tmp_path, progress=False)
    dtype = torch.bfloat16 if precision == "bf16" else None
    losses = [s for s in recording.seen if s[0] == "loss"]
    assert losses == [("loss", dtype, channels_last)] * 6
    assert [s for s in recording.seen if s[0] == "validate"] == [("validate", None, None)] * 2
    assert summary.metrics["test/bpd"] < 8  # finite, and trained


def test_channels_last_takes_the_same_steps(data_root, tmp_path):
    from common.run.loop import train
    from common.run.objectives import MaximumLikelihood
    from papers.glow.config import build_model

    def final_state(workdir, **train_cfg):
        sgd = {"name": "sgd", "lr": 1e-4, "momentum": 0.9}  # Adam amplifies rounding
        cfg = _glow_cfg(data_root, optim=sgd, **train_cfg)
        train(cfg, MaximumLikelihood(cfg, build_model), workdir, progress=False)
        return torch.load(workdir / "checkpoints/last.pt", weights_only=True)["model"]

    plain, nhwc = final_state(tmp_path / "a"), final_state(tmp_path / "b", channels_last=True)
    conv = next(v for k, v in nhwc.items() if v.ndim == 4 and v.shape[1] > 1)
    assert conv.stride(1) == 1  # the model was converted
    for key, value in plain.items():  # the same arithmetic in another memory layout
        torch.testing.assert_close(nhwc[key], value, rtol=1e-5, atol=1e-6)

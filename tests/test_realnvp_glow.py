"""RealNVP and Glow: every layer of both models passes the invariance check, the
architectures are the papers', and one training step on digits is finite."""

from __future__ import annotations

import math

import pytest
import torch

from common.data import Dataset, load_dataset
from common.flows.bijector import Compose, Permutation, Reverse
from common.flows.coupling import ImageCoupling
from common.flows.elementwise import LearnedBoundAffine, SigmoidAffine
from common.flows.image import ActNorm, BatchNorm, InvertibleConv1x1, Split, Squeeze
from common.flows.layers import ElementwiseAffine
from common.flows.testing import check_bijector
from common.run.config import ConfigError, load_config
from papers.glow.model import GlowModel, build_glow
from papers.glow.train import GlowConfig
from papers.realnvp.model import RealNVPModel, build_realnvp


def fake_dataset(shape, levels=17, n=4):
    x = torch.randint(0, levels, (n, *shape), dtype=torch.uint8)
    return Dataset("fake", x, x, x, levels, md5="0")


def leaves(bijector):
    """The elementary layers of a (nested) flow, in forward order."""
    if isinstance(bijector, Compose):
        for layer in bijector.layers:
            yield from leaves(layer)
    elif isinstance(bijector, Split):
        yield bijector
        yield from leaves(bijector.inner)
    else:
        yield bijector


SMALL = {
    "realnvp": lambda: build_realnvp(
        RealNVPModel(num_scales=2, num_blocks=1, hidden_channels=4), fake_dataset((1, 4, 4))
    ),  # fmt: skip
    **{
        f"glow_{perm}_{coupling}": lambda perm=perm, coupling=coupling: build_glow(
            GlowModel(
                num_levels=2,
                steps_per_level=2,
                hidden_channels=4,
                permutation=perm,
                coupling=coupling,
            ),
            fake_dataset((1, 4, 4)),
        )  # fmt: skip
        for perm in ("conv_lu", "conv", "shuffle", "reverse")
        for coupling in ("affine", "additive")
    },
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_whole_transform_passes_invariance_check(name):
    flow = SMALL[name]()
    check_bijector(flow.transform, torch.rand(3, 1, 4, 4), atol=1e-5)


@pytest.mark.parametrize("name", ["realnvp", "glow_conv_lu_affine"])
def test_every_layer_passes_invariance_check(name):
    """Layer by layer on the inputs each layer sees (a Split is checked with its inner flow)."""
    flow = SMALL[name]()
    x = torch.rand(3, 1, 4, 4)

    def walk(bijector, x):
        for layer in bijector.layers if isinstance(bijector, Compose) else [bijector]:
            if isinstance(layer, Compose):
                x = walk(layer, x)
                continue
            check_bijector(layer, x, atol=1e-5)
            if isinstance(layer, Split):
                walk(layer.inner, x.chunk(2, dim=1)[0].detach())
            x = layer(x)[0].detach()
        return x

    assert walk(flow.transform, x).shape == (3, 16)


def test_realnvp_architecture_follows_the_paper():
    flow = build_realnvp(RealNVPModel(num_scales=3, num_blocks=1, hidden_channels=4),
                         fake_dataset((3, 8, 8)))  # fmt: skip
    couplings = [layer for layer in leaves(flow.transform) if isinstance(layer, ImageCoupling)]
    masks = [(c.mask, c.num_channels) for c in couplings]
    # per scale but the last: 3 checkerboard (C) → squeeze → 3 channel (4C) → split half
    assert masks == [("checkerboard", 3)] * 3 + [("channel", 12)] * 3 + \
        [("checkerboard", 6)] * 3 + [("channel", 24)] * 3 + [("checkerboard", 12)] * 4  # fmt: skip
    assert [c.parity for c in couplings[:6]] == [0, 1, 0, 0, 1, 0]
    assert all(isinstance(c.map, LearnedBoundAffine) for c in couplings)
    layers = list(leaves(flow.transform))
    assert sum(isinstance(layer, BatchNorm) for layer in layers) == len(couplings)
    assert sum(isinstance(layer, Split) for layer in layers) == 2
    assert all(s.prior_net is None for s in layers if isinstance(s, Split))  # fixed N(0, I)


def test_realnvp_doubles_feature_maps_per_scale_as_the_authors_code():
    def widths(double: bool) -> list[int]:
        cfg = RealNVPModel(num_scales=3, num_blocks=1, hidden_channels=4, double_per_scale=double)
        flow = build_realnvp(cfg, fake_dataset((3, 8, 8)))
        couplings = [c for c in leaves(flow.transform) if isinstance(c, ImageCoupling)]
        return [c.conditioner.head.in_channels for c in couplings]

    assert widths(False) == [4] * 16
    assert widths(True) == [4] * 6 + [8] * 6 + [16] * 4  # 6 couplings per scale, 4 at the last


def test_glow_architecture_follows_the_paper():
    cfg = GlowModel(num_levels=3, steps_per_level=3, hidden_channels=8)
    flow = build_glow(cfg, fake_dataset((3, 8, 8)))
    layers = list(leaves(flow.transform))
    kinds = [type(layer) for layer in layers]
    assert kinds.count(Squeeze) == 3 and kinds.count(Split) == 2
    steps = [layers[i : i + 3] for i, k in enumerate(kinds) if k is ActNorm]
    assert len(steps) == 3 * 3
    for _, conv, coupling in steps:  # ActNorm → 1×1 conv → affine coupling
        assert isinstance(conv, InvertibleConv1x1) and conv.lu is not None
        assert coupling.mask == "channel" and isinstance(coupling.map, SigmoidAffine)
    widths = [step[0].bias.numel() for step in steps]
    assert widths == [12] * 3 + [24] * 3 + [48] * 3
    assert all(s.prior_net is not None for s in layers if isinstance(s, Split))  # learned
    assert isinstance(layers[-2], ElementwiseAffine)  # the learned top prior


def test_glow_ablation_permutations():
    data = fake_dataset((1, 4, 4))
    for perm, cls in [("reverse", Reverse), ("shuffle", Permutation)]:
        cfg = GlowModel(num_levels=1, steps_per_level=2, hidden_channels=4, permutation=perm)
        layers = list(leaves(build_glow(cfg, data).transform))
        assert sum(type(layer) is cls for layer in layers) == 2
        assert not any(isinstance(layer, InvertibleConv1x1) for layer in layers)


def test_paper_configs_match_the_papers():
    glow = load_config(GlowConfig, "papers/glow/configs/paper/cifar10_glow.yaml")
    assert (glow.model.num_levels, glow.model.steps_per_level, glow.model.hidden_channels) == (
        3, 32, 512)  # fmt: skip
    assert glow.train.batch_size == 512 and glow.data.name == "cifar10"
    from papers.realnvp.train import RealNVPConfig

    rnvp = load_config(RealNVPConfig, "papers/realnvp/configs/paper/cifar10_realnvp.yaml")
    assert (rnvp.model.num_blocks, rnvp.model.hidden_channels, rnvp.train.batch_size) == (8, 64, 64)
    assert rnvp.model.double_per_scale  # the authors' code
    assert glow.model.permutation == "conv"  # the authors' CIFAR-10 run: the plain 1×1 conv
    assert rnvp.train.hflip and rnvp.model.scale_l2 == 5e-5 and rnvp.model.logit_alpha == 0.05


def test_glow_paper_model_size_on_cifar10_shapes():
    """The paper's CIFAR-10 Glow (L = 3, K = 32, width 512: 44.06 M parameters) builds on
    3×32×32 inputs; its parameter count follows from the architecture: per step on C
    channels, ActNorm 2C, LU 1×1 conv 2C² + C (L and U kept as masked C×C matrices, and
    log s; P and the signs are buffers), coupling net 3·3·(C/2)·512 + 512 + 512² + 512 +
    3·3·512·C + C + C; split priors 3·3·(C/2)·C + C + C; top prior 2·48·4·4."""
    flow = build_glow(GlowModel(), fake_dataset((3, 32, 32), levels=256, n=2))
    total = 0
    for level, C in enumerate((12, 24, 48)):
        step = 2 * C + (2 * C * C + C) + (9 * (C // 2) * 512 + 512 + 512 * 512 + 512
                                      + 9 * 512 * C + C + C)  # fmt: skip
        total += 32 * step
        if level < 2:
            total += 9 * (C // 2) * C + C + C
    total += 2 * 48 * 4 * 4
    assert sum(p.numel() for p in flow.parameters()) == total
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert flow.log_prob(x).shape == (2,)


def test_models_reject_unsuitable_data():
    with pytest.raises(ConfigError, match="divisible"):
        build_glow(GlowModel(num_levels=4), fake_dataset((1, 8, 8)))
    toy = Dataset("moons", torch.randn(4, 2), torch.randn(4, 2), torch.randn(4, 2), None, "0")
    with pytest.raises(ConfigError, match="image data"):
        build_realnvp(RealNVPModel(), toy)


@pytest.mark.parametrize("name", ["realnvp", "glow_conv_lu_affine"])
def test_training_step_and_temperature_sampling_on_digits(name, data_root):
    data = load_dataset("digits", data_root)
    torch.manual_seed(0)
    if name == "realnvp":
        flow = build_realnvp(RealNVPModel(num_blocks=1, hidden_channels=8), data)
    else:
        flow = build_glow(GlowModel(num_levels=2, steps_per_level=2, hidden_channels=8), data)
    opt = torch.optim.Adam(flow.parameters(), 1e-3)
    loss = -flow.log_prob(data.x_train[:32]).mean() + flow.penalty()
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    flow.eval()
    for t in (0.5, 1.0):
        samples = flow.sample(8, temperature=t)
        assert samples.shape == (8, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 16
    torch.manual_seed(3)
    cold = flow.base.sample(2000, temperature=0.5)
    assert 0.45 < cold.std().item() < 0.55  # the base is N(0, T²I)


@pytest.mark.parametrize("name", ["realnvp", "glow_conv_lu_affine", "glow_conv_additive"])
def test_whole_model_float32_round_trip_on_real_digits(name, data_root):
    """x → z → x through the whole flow, in float32, on dequantized digits: within 1e-4."""
    data = load_dataset("digits", data_root)
    torch.manual_seed(0)
    if name == "realnvp":
        flow = build_realnvp(RealNVPModel(num_blocks=2, hidden_channels=16), data)
    else:
        perm, coupling = name.split("_", 1)[1].rsplit("_", 1)
        cfg = GlowModel(num_levels=2, steps_per_level=4, hidden_channels=16, permutation=perm,
                        coupling=coupling)  # fmt: skip
        flow = build_glow(cfg, data)
    x = flow.dequantization(data.x_train[:64])[0]  # (64, 1, 8, 8) in [0, 1)
    flow.transform(x)  # a training-mode pass: ActNorm init, batch statistics
    with torch.no_grad():
        for p in flow.parameters():  # away from the identity init, as after training
            p.add_(0.02 * torch.randn_like(p))
    flow.eval()
    with torch.no_grad():
        z, ldj = flow.transform(x)
        x_rec, inv_ldj = flow.transform.inverse(z)
    assert z.shape == (64, 64) and torch.isfinite(z).all()
    assert (x_rec - x).abs().max().item() < 1e-4
    assert ((ldj + inv_ldj).abs() / ldj.abs().clamp_min(1)).max().item() < 1e-5


def test_realnvp_on_vectors_passes_and_trains(data_root):
    from common.run.vector_models import RealNVPMLPModel, build_realnvp_mlp

    data = load_dataset("moons", data_root)
    torch.manual_seed(0)
    flow = build_realnvp_mlp(RealNVPMLPModel(num_couplings=4, hidden_features=8), data)
    check_bijector(flow.transform, torch.randn(5, 2))
    for layer in flow.transform.layers:
        check_bijector(layer, torch.randn(5, 2))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    losses = []
    for step in range(60):
        batch = data.x_train[64 * step : 64 * (step + 1)]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    flow.eval()
    with torch.no_grad():
        # it learned something: 3.48 nats at the start, 3.10 on validation after 60 steps
        assert -flow.log_prob(data.x_val).mean() < losses[0] - 0.2
    with pytest.raises(ConfigError, match="continuous vectors"):
        build_realnvp_mlp(RealNVPMLPModel(), load_dataset("digits", data_root))

"""The image bijectors of common/ (RealNVP, Glow) pass the invariance check with perturbed
parameters, and behave as their papers say (squeeze layout, data-dependent init, masks)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from common.data import load_dataset
from common.flows.bijector import Compose, Permutation, Reverse
from common.flows.coupling import ImageCoupling, checkerboard_mask
from common.flows.dequantize import UniformDequantization
from common.flows.elementwise import (
    Additive,
    LearnedBoundAffine,
    RationalQuadraticSpline,
    SigmoidAffine,
)
from common.flows.image import ActNorm, BatchNorm, InvertibleConv1x1, Split, Squeeze
from common.flows.layers import ElementwiseAffine, Reshape
from common.flows.nets import GlowConditioner, ResNetConditioner
from common.flows.testing import check_bijector

C, H, W = 4, 4, 4


MAPS = {
    "additive": Additive,
    "learned_bound_affine": LearnedBoundAffine,  # RealNVP
    "sigmoid_affine": SigmoidAffine,  # Glow
    "spline": partial(RationalQuadraticSpline, num_bins=4, bound=2.0),
}


def coupling(mask, parity, elementwise, channels=C):
    """RealNVP's ResNet conditioner for its map, Glow's network for the others."""
    if elementwise == "learned_bound_affine":

        def net(n_in, n_out):
            return ResNetConditioner(n_in, n_out, 8, 1, batch_norm=True, scale_l2=1e-3)
    else:

        def net(n_in, n_out):
            return GlowConditioner(n_in, n_out, 8)

    return ImageCoupling(channels, MAPS[elementwise], net, mask, parity)


def flat(shape):
    return Reshape(shape, (shape[0] * shape[1] * shape[2],))


LAYERS = {
    "squeeze": Squeeze,
    "actnorm": lambda: ActNorm(C),
    "conv1x1_plain": lambda: InvertibleConv1x1(C, lu=False),
    "conv1x1_lu": lambda: InvertibleConv1x1(C, lu=True),
    "batch_norm": lambda: BatchNorm(C),
    "channel_reverse": lambda: Reverse(C, dim=1),
    "channel_shuffle": lambda: Permutation.random(C, seed=2, dim=1),
    "learned_top_prior": lambda: ElementwiseAffine((C, H, W)),
    "split_learned_prior": lambda: Split(
        Compose(Squeeze(), ActNorm(8), flat((8, 2, 2))), (C, H, W), "learned"
    ),  # fmt: skip
    "split_fixed_prior": lambda: Split(Compose(Squeeze(), flat((8, 2, 2))), (C, H, W), "fixed"),
}
for _mask in ("checkerboard", "channel"):
    for _parity in (0, 1):
        for _map in MAPS:
            LAYERS[f"{_mask}{_parity}_{_map}"] = (
                lambda m=_mask, p=_parity, e=_map: coupling(m, p, e))  # fmt: skip


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_image_layers_pass_invariance_check(name):
    check_bijector(LAYERS[name](), torch.randn(3, C, H, W))


@pytest.mark.parametrize("parity", [0, 1])
def test_channel_coupling_with_odd_channels(parity):
    check_bijector(coupling("channel", parity, "learned_bound_affine", channels=3),
                   torch.randn(3, 3, 2, 2))  # fmt: skip


def test_squeeze_layout():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    z, _ = Squeeze()(x)
    assert z.shape == (1, 4, 2, 2)
    # channel 2i + j holds position (i, j) of every 2×2 block
    assert z[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert z[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]


def test_checkerboard_mask():
    m = checkerboard_mask(2, 3, 0)[0, 0]
    assert m.tolist() == [[True, False, True], [False, True, False]]
    assert torch.equal(checkerboard_mask(4, 4, 1), ~checkerboard_mask(4, 4, 0))


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
def test_coupling_leaves_its_conditioning_half_unchanged(mask):
    layer = coupling(mask, 1, "learned_bound_affine")
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, C, H, W)
    z, _ = layer.eval()(x)
    kept = checkerboard_mask(H, W, 1).expand_as(x) if mask == "checkerboard" else (
        torch.arange(C)[None, :, None, None] >= C // 2).expand_as(x)  # fmt: skip
    assert torch.equal(z[kept], x[kept]) and not torch.allclose(z[~kept], x[~kept])


def test_zero_initialised_couplings_start_near_identity():
    names = ("channel0_sigmoid_affine", "checkerboard1_learned_bound_affine", "channel1_additive",
             "checkerboard0_spline")  # fmt: skip
    for name in names:
        x = torch.randn(2, C, H, W)
        z, ldj = LAYERS[name]()(x)
        if "sigmoid" in name:  # x₂ (2 channels) is scaled by σ(0 + 2) at init
            expected = 2 * H * W * math.log(1 / (1 + math.exp(-2.0)))
            assert torch.allclose(ldj, torch.full_like(ldj, expected), atol=1e-4)
        else:
            assert torch.allclose(z, x) and torch.allclose(ldj, torch.zeros_like(ldj), atol=1e-5)


def test_actnorm_data_dependent_init_and_reload():
    layer = ActNorm(C)
    x = 3.0 + 2.0 * torch.randn(64, C, H, W)
    z, _ = layer(x)  # training mode, first batch: initialise
    assert bool(layer.initialized)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(C), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(C), atol=1e-4)
    reloaded = ActNorm(C)
    reloaded.load_state_dict(layer.state_dict())
    other = torch.randn(8, C, H, W)
    assert torch.equal(reloaded(other)[0], layer(other)[0]), "a reloaded ActNorm re-initialised"


def test_actnorm_does_not_initialise_in_eval_mode():
    layer = ActNorm(C).eval()
    x = torch.randn(4, C, H, W)
    assert torch.equal(layer(x)[0], x) and not bool(layer.initialized)


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_in_eval():
    layer = BatchNorm(C, momentum=1.0)  # running stats = the last batch's
    x = 5.0 + 3.0 * torch.randn(256, C, H, W)
    z_train, ldj_train = layer(x)
    assert torch.allclose(z_train.mean(dim=(0, 2, 3)), torch.zeros(C), atol=1e-4)
    z_eval, ldj_eval = layer.eval()(x)
    assert torch.allclose(z_eval, z_train, atol=1e-4) and torch.allclose(ldj_eval, ldj_train)


def test_resnet_penalty_is_l2_on_weight_norm_scales():
    net = ResNetConditioner(2, 4, 8, 2, scale_l2=0.5)
    scales = net.weight_scales()
    assert len(scales) == 1 + 2 * 2  # stem + two convs per block
    expected = 0.5 * sum(g.pow(2).sum() for g in scales)
    assert torch.allclose(net.penalty(), expected) and net.penalty() > 0


def test_split_scores_the_factored_half_under_its_prior():
    """log N(ε) + ldj of a Split = log N(x₂; μ(x₁), σ(x₁)²), Glow's split prior."""
    split = Split(flat((2, 4, 4)), (C, H, W), "learned")
    for p in split.prior_net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, C, H, W)
    z, ldj = split(x)
    x1, x2 = x.chunk(2, dim=1)
    mu, log_sigma = split.prior_net(x1).chunk(2, dim=1)
    normal = torch.distributions.Normal(mu, log_sigma.exp())
    expected = normal.log_prob(x2).flatten(1).sum(1)
    got = torch.distributions.Normal(0.0, 1.0).log_prob(z[:, 32:]).sum(1) + ldj
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.fixture(scope="module")
def digits_batch(data_root):
    data = load_dataset("digits", data_root)
    torch.manual_seed(1)
    return UniformDequantization(17)(data.x_train[:32])[0]  # (32, 1, 8, 8) in [0, 1)


def _float32_round_trip(layer, x):
    for p in layer.parameters():  # trained-looking parameters, not the identity init
        with torch.no_grad():
            p.add_(0.05 * torch.randn_like(p))
    layer.train()
    layer(x)  # data-dependent init / batch statistics, as in training
    layer.eval()
    with torch.no_grad():
        z, ldj = layer(x)
        x_rec, inv_ldj = layer.inverse(z)
    return (x_rec - x).abs().max().item(), (ldj + inv_ldj).abs().max().item()


def test_float32_round_trip_on_real_digits(digits_batch):
    """x → z → x on dequantized digits in float32 returns x to within 1e-4, and forward +
    inverse ldj to within 1e-4 nats, layer by layer."""
    x4 = Squeeze()(digits_batch)[0]  # (32, 4, 4, 4)
    for name, make in LAYERS.items():
        err, ldj_err = _float32_round_trip(make(), x4)
        assert err < 1e-4, f"{name}: float32 round trip error {err:.2e}"
        assert ldj_err < 1e-4, f"{name}: float32 forward + inverse ldj = {ldj_err:.2e}"


def test_conv1x1_cache_follows_parameter_updates():
    """Without a gradient the weights and inverse are cached; an in-place update (what an
    optimiser step does) must invalidate them."""
    layer = InvertibleConv1x1(C, lu=True).eval()
    x = torch.randn(2, C, H, W)
    with torch.no_grad():
        z, _ = layer(x)
        assert torch.allclose(layer.inverse(z)[0], x, atol=1e-5)
        layer.lu.upper.add_(0.3)  # the parameters change in place
        z2, _ = layer(x)
        assert not torch.allclose(z2, z)
        assert torch.allclose(layer.inverse(z2)[0], x, atol=1e-5)
    z_grad, _ = layer(x)  # with a gradient: computed afresh, differentiable
    assert torch.equal(z_grad, z2) and z_grad.requires_grad

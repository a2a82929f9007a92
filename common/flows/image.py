"""Bijectors on images ``(B, C, H, W)``: the building blocks of the multi-scale flows of
RealNVP (Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803) and Glow (Kingma & Dhariwal
2018, arXiv:1807.03039).

- :class:`Squeeze`: space to channels, ``(C, H, W) → (4C, H/2, W/2)``;
- :class:`ActNorm`, :class:`InvertibleConv1x1` (plain or LU), :class:`BatchNorm`;
- :class:`Split`: the multi-scale factor-out, with a fixed or a learned conditional prior;
- :func:`multi_scale`: the arrangement of levels (squeeze → steps → split) that Glow, the
  multi-scale i-ResNet and FFJORD's image model share.

Every layer follows the contract of :mod:`common.flows.bijector` (data → latent, ``ldj`` of shape
``(B,)`` summed over channels *and* positions) and passes ``common.flows.testing.check_bijector``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from common.flows.bijector import (
    Bijector,
    Compose,
    InputOutsideDomainError,
    per_channel,
    sum_except_batch,
)
from common.flows.distributed import channel_moments
from common.flows.layers import ElementwiseAffine, Reshape
from common.flows.logdet import LUParametrization
from common.flows.nets import ZeroConv2d

__all__ = [
    "ActNorm",
    "BatchNorm",
    "InvertibleConv1x1",
    "Split",
    "Squeeze",
    "multi_scale",
    "set_batch_norm_statistics",
]


def _num_positions(x: Tensor) -> int:
    """Spatial positions per channel: H·W for images, 1 for ``(B, C)``."""
    return x[0, 0].numel()


class Squeeze(Bijector):
    """Space-to-channel reshaping (RealNVP Sec. 3.6, Fig. 3; Glow Sec. 3): every 2×2 block of
    each channel becomes 4 channels, ``(B, C, H, W) → (B, 4C, H/2, W/2)``. Output channel
    ``4c + 2i + j`` holds position ``(i, j)`` of the blocks of input channel ``c``. A
    permutation of coordinates: ldj = 0."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.ndim != 4 or x.shape[2] % 2 or x.shape[3] % 2:
            raise InputOutsideDomainError(
                f"Squeeze needs (B, C, H, W) with even H and W, got {tuple(x.shape)}"
            )
        B, C, H, W = x.shape
        z = x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4)  # (B,C,2,2,H/2,W/2)
        return z.reshape(B, 4 * C, H // 2, W // 2), x.new_zeros(B)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if z.ndim != 4 or z.shape[1] % 4:
            raise InputOutsideDomainError(
                f"Squeeze.inverse needs (B, 4C, H, W), got {tuple(z.shape)}"
            )
        B, C4, H, W = z.shape
        x = z.reshape(B, C4 // 4, 2, 2, H, W).permute(0, 1, 4, 2, 5, 3)  # (B, C, H, 2, W, 2)
        return x.reshape(B, C4 // 4, 2 * H, 2 * W), z.new_zeros(B)


class ActNorm(Bijector):
    """Activation normalisation (Glow Sec. 3.1): a per-channel affine map

        z = (x + b) · exp(s),    ldj = H · W · Σ_c s_c,

    initialised from data: on the first forward pass in training mode, b = −mean and
    s = −log(std + 1e-6) of the batch per channel, so z starts with zero mean and unit
    variance. The ``initialized`` flag is a buffer, so a reloaded model never re-initialises.
    In a data-parallel run the statistics are the global batch's, all-reduced
    (:mod:`common.flows.distributed`), so every rank initialises alike.
    Shapes: ``(B, C, H, W)`` or ``(B, C)``.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        # the global batch's statistics in a data-parallel run: every rank initialises alike,
        # and as one process would on the whole batch
        mean, var, _ = channel_moments(x, unbiased=True)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(var.sqrt() + 1e-6))
        self.initialized.fill_(True)

    def _ldj(self, x: Tensor) -> Tensor:
        return (_num_positions(x) * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized:
            self._initialize(x)
        z = (x + per_channel(self.bias, x)) * per_channel(self.log_scale, x).exp()
        return z, self._ldj(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z * per_channel(-self.log_scale, z).exp() - per_channel(self.bias, z)
        return x, -self._ldj(z)


class InvertibleConv1x1(Bijector):
    """Invertible 1×1 convolution (Glow Sec. 3.2): z = W x at every position, a learned
    generalisation of a channel permutation, with

        ldj = H · W · log |det W|.

    ``lu=False``: W is a free ``(C, C)`` matrix (O(C³) log-det); ``lu=True``: W = P·L·(U +
    diag(s)) (:class:`~common.flows.logdet.LUParametrization`), log |det W| = Σ log |s| in O(C).
    Both start from a random rotation (QR of a Gaussian matrix from the global RNG, so a
    seeded model build is reproducible). Shapes: ``(B, C, H, W)`` or ``(B, C)``.
    """

    def __init__(self, num_channels: int, lu: bool = True) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(num_channels, num_channels))[0]
        self.num_channels = num_channels
        if lu:
            self.lu = LUParametrization(num_channels, weight=rotation)
            self.weight = None
        else:
            self.lu = None
            self.weight = nn.Parameter(rotation)

    def _weight_and_logdet(self) -> tuple[Tensor, Tensor]:
        if self.lu is not None:
            return self.lu.weight(), self.lu.logabsdet()
        return self.weight, torch.linalg.slogdet(self.weight).logabsdet

    def _inverse_weight(self) -> Tensor:
        if self.lu is None:
            return torch.linalg.inv(self.weight)
        L, U = self.lu.factors()  # W⁻¹ = U⁻¹ L⁻¹ Pᵀ by triangular solves
        eye = torch.eye(self.num_channels, dtype=L.dtype, device=L.device)
        L_inv = torch.linalg.solve_triangular(L, eye, upper=False, unitriangular=True)
        U_inv = torch.linalg.solve_triangular(U, eye, upper=True)
        return U_inv @ L_inv @ self.lu.P.T

    def _cached(self, name: str, compute):
        """``compute()`` once per parameter state when no gradient is recorded (sampling,
        evaluation): keyed on the parameters' version counters, which every in-place update
        (an optimiser step, ``load_state_dict``) bumps, and on their dtype and device. With a
        gradient recorded it is computed afresh, so that it stays differentiable; inside
        ``torch.compile`` too (the compiled graph holds the computation)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return compute()  # differentiable; or traced once into a compiled graph
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        cache = self.__dict__.setdefault("_cache", {})
        if cache.get(name, (None,))[0] != key:
            cache[name] = (key, compute())
        return cache[name][1]

    def _check(self, x: Tensor) -> None:
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise InputOutsideDomainError(
                f"InvertibleConv1x1({self.num_channels}) got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        W, logdet = self._cached("weight", self._weight_and_logdet)
        z = torch.einsum("ij,bj...->bi...", W, x)  # (B, C, H, W)
        return z, (_num_positions(x) * logdet).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        _, logdet = self._cached("weight", self._weight_and_logdet)
        x = torch.einsum("ij,bj...->bi...", self._cached("inverse", self._inverse_weight), z)
        return x, -(_num_positions(z) * logdet).expand(z.shape[0])


class BatchNorm(Bijector):
    """Batch normalisation as a bijector (RealNVP Sec. 3.7; MAF Sec. 3.4):

        z = (x − μ) / √(σ² + ε) · exp(log γ) + β,
        ldj = (positions) · Σ_c [log γ_c − ½ log(σ²_c + ε)],

    per channel. In training mode μ, σ² are the batch's statistics (gradients flow through
    them, the ldj treats them as constants for each example, as the papers do) and the
    running averages in the buffers are updated; in eval mode, and always in the inverse, the
    running averages are used, so the layer is an exact bijection there. In a data-parallel
    run the batch statistics are the global batch's (:mod:`common.flows.distributed`).
    Shapes: ``(B, C, H, W)`` or ``(B, C)``.
    """

    def __init__(self, num_channels: int, momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(num_channels))
        self.beta = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def _ldj(self, var: Tensor, x: Tensor) -> Tensor:
        per_channel = self.log_gamma - 0.5 * torch.log(var + self.eps)
        return (_num_positions(x) * per_channel.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training:  # the global batch's statistics in a data-parallel run
            mean, var, _ = channel_moments(x)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - per_channel(mean, x)) * per_channel(torch.rsqrt(var + self.eps), x)
        z = x_hat * per_channel(self.log_gamma, x).exp() + per_channel(self.beta, x)
        return z, self._ldj(var, x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self.running_mean, self.running_var
        x_hat = (z - per_channel(self.beta, z)) * per_channel(-self.log_gamma, z).exp()
        x = x_hat * per_channel(torch.sqrt(var + self.eps), z) + per_channel(mean, z)
        return x, -self._ldj(var, z)


@torch.no_grad()
def set_batch_norm_statistics(
    transform: Bijector, y: Tensor, batch_size: int = 4096, context: Tensor | None = None
) -> int:
    """Set the running statistics of every :class:`BatchNorm` in ``transform`` to the mean and
    (biased) variance of its inputs over all of ``y`` ``(N, ...)``, in the order the layers
    apply, each computed with the ones before it already set: MAF's test-time batch norm
    ("the statistics of the whole training set", as the authors' code does after training).
    Runs in eval mode in chunks of ``batch_size``; nested :class:`Compose` are walked, and a
    batch norm inside any other container is an error. ``context`` ``(N, C)``, one row per
    row of ``y``, is passed to every layer (a conditional flow). Returns the number of layers
    set."""
    was_training = transform.training
    transform.eval()
    contexts = context.split(batch_size) if context is not None else None
    try:
        return _set_statistics(transform, y.split(batch_size), contexts)[1]
    finally:
        transform.train(was_training)


def _set_statistics(layer: Bijector, chunks: tuple[Tensor, ...], contexts) -> tuple[tuple, int]:
    if isinstance(layer, Compose):
        count = 0
        for inner in layer.layers:
            chunks, n = _set_statistics(inner, chunks, contexts)
            count += n
        return chunks, count
    if isinstance(layer, BatchNorm):
        dims = [0, *range(2, chunks[0].ndim)]
        y = torch.cat(chunks).double()  # the exact moments of the whole set
        layer.running_mean.copy_(y.mean(dim=dims))
        layer.running_var.copy_(y.var(dim=dims, unbiased=False))
    elif any(isinstance(m, BatchNorm) for m in layer.modules()):
        raise ValueError(f"a BatchNorm inside {type(layer).__name__}: only Compose is walked")
    if contexts is None:
        return tuple(layer(c)[0] for c in chunks), int(isinstance(layer, BatchNorm))
    out = tuple(layer(c, h)[0] for c, h in zip(chunks, contexts, strict=True))
    return out, int(isinstance(layer, BatchNorm))


class Split(Bijector):
    """Multi-scale factor-out (RealNVP Sec. 3.6; Glow Sec. 3, "split"). The channels are cut in
    half, x = (x₁, x₂); x₁ continues through ``inner`` (the rest of the flow, which must end
    in a flat ``(B, D₁)`` latent); x₂ is scored now under a Gaussian prior

        ``prior='fixed'``   (RealNVP): x₂ ~ N(0, I)
        ``prior='learned'`` (Glow):    x₂ ~ N(μ(x₁), diag σ(x₁)²), (μ, log σ) = ZeroConv(x₁)

    Written as a bijection, ε = (x₂ − μ) · exp(−log σ) and ldj = ldj_inner − Σ log σ; the
    output is ``z = cat(z₁, flatten(ε))``. With the standard-normal base over z,
    log N(ε) − Σ log σ = log N(x₂; μ, σ²): the prior's score is counted through ldj, and
    sampling the base at temperature T gives x₂ = μ + σ·T·ε, Glow's temperature sampling.

    Shapes: ``(B, C, H, W) → (B, C·H·W)`` (C even).
    """

    def __init__(
        self,
        inner: Bijector,
        in_shape: tuple[int, int, int],
        prior: Literal["fixed", "learned"] = "learned",
    ) -> None:
        super().__init__()
        C, H, W = in_shape
        if C % 2:
            raise ValueError(f"Split needs an even number of channels, got {C}")
        if prior not in ("fixed", "learned"):
            raise ValueError(f"prior must be 'fixed' or 'learned', got {prior!r}")
        self.in_shape = tuple(in_shape)
        self.half_shape = (C // 2, H, W)
        self.inner = inner
        self.prior_net = ZeroConv2d(C // 2, C) if prior == "learned" else None

    def _prior(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        if self.prior_net is None:
            return torch.zeros_like(x1), torch.zeros_like(x1)
        mu, log_sigma = self.prior_net(x1).chunk(2, dim=1)  # (B, C/2, H, W) each
        return mu, log_sigma

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != self.in_shape:
            raise InputOutsideDomainError(f"Split expects (B, *{self.in_shape}), got {x.shape}")
        x1, x2 = x.chunk(2, dim=1)
        z1, ldj = self.inner(x1, context)
        if z1.ndim != 2:
            raise ValueError("the inner flow of a Split must end in a flat (B, D) latent")
        mu, log_sigma = self._prior(x1)
        eps = (x2 - mu) * (-log_sigma).exp()
        return torch.cat([z1, eps.flatten(1)], dim=1), ldj - sum_except_batch(log_sigma)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        d = z.shape[1] // 2
        x1, ldj = self.inner.inverse(z[:, :d], context)
        mu, log_sigma = self._prior(x1)
        x2 = mu + log_sigma.exp() * z[:, d:].reshape(-1, *self.half_shape)
        return torch.cat([x1, x2], dim=1), ldj + sum_except_batch(log_sigma)


Shape = tuple[int, int, int]


def multi_scale(
    shape: Shape,
    num_levels: int,
    steps: Callable[[int, Shape], list[Bijector]],
    split_prior: Literal["fixed", "learned"] = "learned",
    learn_top: bool = False,
    pre_steps: Callable[[int, Shape], list[Bijector]] | None = None,
    squeeze_last: bool = True,
) -> Bijector:
    """The multi-scale arrangement (RealNVP Sec. 3.6; Glow Fig. 2b; i-ResNet's density model
    with strides 1, 2, 2 after an initial squeeze; FFJORD's ODE-NVP): for levels
    l = 0 … L−1,

        ``pre_steps(l, (C, H, W))`` → Squeeze → ``steps(l, (4C, H/2, W/2))`` → Split

    (Split on all but the last level), the split's kept half going on to level l + 1.
    ``pre_steps`` (optional) builds layers before a level's squeeze: FFJORD puts CNF blocks on
    both sides of each squeeze. ``squeeze_last=False`` leaves the last level unsqueezed, made
    of its ``pre_steps`` alone (FFJORD's last scale). The last level ends in the learned top
    prior (``learn_top``: an :class:`ElementwiseAffine` over its shape) and a flatten. Each
    level's layers are built before the levels inside it (the order the weights draw from the
    random generator).

    Shapes ``(B, C, H, W) → (B, C·H·W)``; H and W divisible by 2^L (2^(L−1) without the last
    squeeze)."""
    C, H, W = shape
    halvings = num_levels if squeeze_last else num_levels - 1
    if H % 2**halvings or W % 2**halvings:
        raise ValueError(f"{num_levels} levels need H and W divisible by {2**halvings}, "
                         f"got {H}×{W}")  # fmt: skip
    if not squeeze_last and pre_steps is None:
        raise ValueError("squeeze_last=False leaves the last level to pre_steps; give pre_steps")

    def level(shape: Shape, k: int) -> Bijector:
        C, H, W = shape
        layers: list[Bijector] = [] if pre_steps is None else pre_steps(k, shape)
        last = k == num_levels - 1
        if last and not squeeze_last:
            top = [ElementwiseAffine(shape)] if learn_top else []
            return Compose(*layers, *top, Reshape(shape, (C * H * W,)))
        squeezed = (4 * C, H // 2, W // 2)
        layers += [Squeeze(), *steps(k, squeezed)]
        if last:
            top = [ElementwiseAffine(squeezed)] if learn_top else []
            return Compose(*layers, *top, Reshape(squeezed, (C * H * W,)))
        inner = level((2 * C, H // 2, W // 2), k + 1)
        return Compose(*layers, Split(inner, squeezed, prior=split_prior))

    return level((C, H, W), 0)

"""Elementwise, reshaping and coupling bijectors on flat ``(B, D)`` (or reshaped) tensors."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from common.bijector import Bijector, InputOutsideDomainError, sum_except_batch

__all__ = ["Coupling", "ElementwiseAffine", "Reshape", "alternating_mask"]


class Reshape(Bijector):
    """Reshape each example from ``in_shape`` to ``out_shape`` (ldj = 0); e.g. flatten images
    ``(B, 1, 8, 8) → (B, 64)`` for fully connected flows such as NICE."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        if math.prod(in_shape) != math.prod(out_shape):
            raise ValueError(f"cannot reshape {in_shape} to {out_shape}")
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    @staticmethod
    def _reshape(t: Tensor, src: tuple[int, ...], dst: tuple[int, ...]) -> Tensor:
        if tuple(t.shape[1:]) != src:
            raise InputOutsideDomainError(f"expected (B, *{src}), got {tuple(t.shape)}")
        return t.reshape(t.shape[0], *dst)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._reshape(x, self.in_shape, self.out_shape), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._reshape(z, self.out_shape, self.in_shape), z.new_zeros(z.shape[0])


class ElementwiseAffine(Bijector):
    """z = x · exp(s) + b, elementwise over ``num_features``; ldj = Σ_d s_d.

    With ``shift=False`` this is NICE's diagonal scaling layer (Dinh et al. 2014, Sec. 3.3: "the
    only volume change"); with a standard-normal base and ``shift=True`` it is a diagonal
    Gaussian model with mean −b·exp(−s) and std exp(−s). Initialised to the identity.

    ``num_features`` may be a shape, e.g. ``(C, H, W)``: on the top latent of a multi-scale
    flow this is Glow's learned top prior N(μ, diag σ²) (``learn_top`` in the authors' code:
    a mean and log-std per position, zero at init) written as a bijection ahead of N(0, I).
    """

    def __init__(self, num_features: int | tuple[int, ...], shift: bool = True) -> None:
        super().__init__()
        shape = (num_features,) if isinstance(num_features, int) else tuple(num_features)
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.shift = nn.Parameter(torch.zeros(shape)) if shift else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = x * self.log_scale.exp()
        if self.shift is not None:
            z = z + self.shift
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.shift is not None:
            z = z - self.shift
        return z * (-self.log_scale).exp(), -self.log_scale.sum().expand(z.shape[0])


def alternating_mask(num_features: int, parity: int) -> Tensor:
    """Boolean mask selecting the features whose index has the given parity (0: even, 1: odd):
    NICE's alternating partition of the input (Sec. 5.1)."""
    return torch.arange(num_features) % 2 == parity


class Coupling(Bijector):
    """Coupling layer on ``(B, D)``: the masked features x₁ pass through unchanged and condition
    an elementwise map of the rest, x₂ (Dinh et al. 2014, Eq. (4); Dinh et al. 2017, Eq. (6)):

        additive:  z₂ = x₂ + m(x₁)                                   ldj = 0
        affine:    z₂ = x₂ · exp(s) + t,  s = c · tanh(ŝ/c), (ŝ, t) = m(x₁)   ldj = Σ s

    The tanh bound on the log-scale (``scale_bound`` = c) keeps early training stable.
    ``conditioner`` maps ``(B, |x₁| [+ context])`` to ``(B, |x₂|)`` (additive) or
    ``(B, 2·|x₂|)`` (affine); when a context is given it is concatenated to x₁.
    """

    def __init__(
        self,
        mask: Tensor,
        conditioner: nn.Module,
        transform: str = "additive",
        scale_bound: float = 2.0,
    ) -> None:
        super().__init__()
        if transform not in ("additive", "affine"):
            raise ValueError(f"transform must be 'additive' or 'affine', got {transform!r}")
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.all() or not mask.any():
            raise ValueError("coupling mask must select some but not all features")
        self.transform = transform
        self.scale_bound = scale_bound
        self.conditioner = conditioner
        identity = torch.nonzero(mask).flatten()
        transformed = torch.nonzero(~mask).flatten()
        self.register_buffer("identity_idx", identity)
        self.register_buffer("transformed_idx", transformed)
        # z = cat(x₁, z₂)[:, unshuffle] restores the original feature order.
        self.register_buffer("unshuffle", torch.argsort(torch.cat([identity, transformed])))

    def _params(self, x1: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None]:
        h = self.conditioner(x1 if context is None else torch.cat([x1, context], dim=1))
        if self.transform == "additive":
            return h, None
        raw_log_scale, shift = h.chunk(2, dim=1)
        log_scale = self.scale_bound * torch.tanh(raw_log_scale / self.scale_bound)
        return shift, log_scale

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, self.identity_idx], x[:, self.transformed_idx]  # (B, D1), (B, D2)
        shift, log_scale = self._params(x1, context)
        if log_scale is None:
            z2, ldj = x2 + shift, x.new_zeros(x.shape[0])
        else:
            z2, ldj = x2 * log_scale.exp() + shift, sum_except_batch(log_scale)
        return torch.cat([x1, z2], dim=1)[:, self.unshuffle], ldj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z1, z2 = z[:, self.identity_idx], z[:, self.transformed_idx]
        shift, log_scale = self._params(z1, context)
        if log_scale is None:
            x2, ldj = z2 - shift, z.new_zeros(z.shape[0])
        else:
            x2, ldj = (z2 - shift) * (-log_scale).exp(), -sum_except_batch(log_scale)
        return torch.cat([z1, x2], dim=1)[:, self.unshuffle], ldj

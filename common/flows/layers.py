"""Free elementwise and reshaping bijectors (couplings live in :mod:`common.flows.coupling`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from common.flows.bijector import Bijector, InputOutsideDomainError

__all__ = ["ElementwiseAffine", "Reshape"]


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

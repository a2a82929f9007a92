"""Coupling layers: a conditioning scheme for any elementwise map.

The input is partitioned into x₁, which passes through unchanged, and x₂, which is moved by an
elementwise map whose parameters a network computes from x₁ (Dinh et al., NICE, Eq. (3)-(4);
RealNVP, Eq. (6)-(7)):

    z₁ = x₁,    z₂ = f(x₂; NN(x₁)),    ldj = Σ log |∂f/∂x₂|.

The map (:mod:`common.flows.elementwise`: additive, affine, Glow's sigmoid affine, a spline)
declares how many parameters it needs per element, and the layer sizes its network from it:
callers pass a *map factory* ``(num_features) -> map`` and a *network factory*
``(in_features, out_features) -> nn.Module``, and never compute an output size.

- :class:`Coupling`: vectors ``(B, D)``, any boolean mask (NICE's alternating halves,
  RealNVP's vector couplings); a context ``(B, C_ctx)``, if given, is concatenated to x₁.
- :class:`ImageCoupling`: images ``(B, C, H, W)``, checkerboard or channel masks (RealNVP
  Sec. 3.4, Glow Sec. 3.3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from common.flows.bijector import Bijector, InputOutsideDomainError, sum_except_batch
from common.flows.elementwise import MapFactory
from common.flows.precision import run_network

__all__ = [
    "Coupling",
    "ImageCoupling",
    "NetFactory",
    "alternating_mask",
    "checkerboard_mask",
    "half_mask",
]

NetFactory = Callable[[int, int], nn.Module]
"""Builds a conditioner ``(B, in_features, ...) → (B, out_features, ...)``."""


def alternating_mask(num_features: int, parity: int) -> Tensor:
    """Boolean mask selecting the features whose index has the given parity (0: even, 1: odd):
    NICE's alternating partition of the input (Sec. 5.1)."""
    return torch.arange(num_features) % 2 == parity


def half_mask(num_features: int, parity: int) -> Tensor:
    """Boolean mask selecting the first ⌈D/2⌉ features (parity 0) or the last ⌊D/2⌋ (parity 1):
    contiguous halves, split and merged without any gather (alternate the parity, or put a
    permutation between couplings, so that every feature gets transformed)."""
    mask = torch.zeros(num_features, dtype=torch.bool)
    half = (num_features + 1) // 2
    if parity == 0:
        mask[:half] = True
    else:
        mask[half:] = True
    return mask


def checkerboard_mask(height: int, width: int, parity: int) -> Tensor:
    """``(1, 1, H, W)`` boolean mask, True where (i + j) % 2 == parity: the positions a
    checkerboard coupling leaves unchanged (RealNVP Sec. 3.4, Fig. 2)."""
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((i + j) % 2 == parity)[None, None]


def _as_slice(idx: Tensor) -> slice | None:
    """``idx`` as a slice if it is an arithmetic progression (e.g. every other feature)."""
    if len(idx) == 1:
        return slice(int(idx[0]), int(idx[0]) + 1)
    step = int(idx[1] - idx[0])
    if step > 0 and torch.equal(idx.diff(), torch.full_like(idx[1:], step)):
        return slice(int(idx[0]), int(idx[-1]) + 1, step)
    return None


def _ldj(log_deriv: Tensor | None, like: Tensor) -> Tensor:
    return like.new_zeros(like.shape[0]) if log_deriv is None else sum_except_batch(log_deriv)


class Coupling(Bijector):
    """Coupling layer on ``(B, D)``: the features where ``mask`` is True (x₁) condition the map
    of the others (x₂). The network sees ``(B, |x₁| + context_features)`` and returns the map's
    ``num_params · |x₂|`` parameters (block-major). Masks that are slices (every other feature,
    a contiguous half) are split by views, other masks by indexing; contiguous halves
    (:func:`half_mask`) are merged by one concatenation, other masks by one gather."""

    def __init__(
        self,
        mask: Tensor,
        elementwise: MapFactory,
        conditioner: NetFactory,
        context_features: int = 0,
    ) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.ndim != 1 or mask.all() or not mask.any():
            raise ValueError("coupling mask must be 1-D and select some but not all features")
        identity, transformed = torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()
        self.num_features = len(mask)
        self.map = elementwise(len(transformed))
        self.conditioner = conditioner(
            len(identity) + context_features, self.map.num_params * len(transformed)
        )
        self._slices = s1, s2 = (_as_slice(identity), _as_slice(transformed))
        contiguous = all(s is not None and s.step in (None, 1) for s in (s1, s2))
        first = "identity_first" if int(identity[0]) == 0 else "transformed_first"
        self._blocks = first if contiguous else None
        self.register_buffer("identity_idx", identity)
        self.register_buffer("transformed_idx", transformed)
        # z = cat(x₁, z₂)[:, unshuffle] restores the original feature order
        self.register_buffer("unshuffle", torch.argsort(torch.cat([identity, transformed])))

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise InputOutsideDomainError(
                f"Coupling({self.num_features} features) got shape {tuple(x.shape)}"
            )
        s1, s2 = self._slices
        x1 = x[:, s1] if s1 is not None else x.index_select(1, self.identity_idx)
        x2 = x[:, s2] if s2 is not None else x.index_select(1, self.transformed_idx)
        return x1, x2

    def _merge(self, x1: Tensor, x2: Tensor) -> Tensor:
        if self._blocks is not None:  # contiguous halves: one concatenation in feature order
            return torch.cat([x1, x2] if self._blocks == "identity_first" else [x2, x1], dim=1)
        # interleaved: one gather back to the original order (writing into slices of an empty
        # tensor is no faster, and changes the rounding of the gradients' batch sums)
        return torch.cat([x1, x2], dim=1).index_select(1, self.unshuffle)

    def _params(self, x1: Tensor, context: Tensor | None) -> Tensor:
        inputs = x1 if context is None else torch.cat([x1, context], dim=1)
        return run_network(self.conditioner, inputs)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x1, x2 = self._split(x)
        z2, log_deriv = self.map(x2, self._params(x1, context))
        return self._merge(x1, z2), _ldj(log_deriv, x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z1, z2 = self._split(z)
        x2, log_deriv = self.map.inverse(z2, self._params(z1, context))
        return self._merge(z1, x2), _ldj(log_deriv, z)


class ImageCoupling(Bijector):
    """A coupling layer on images ``(B, C, H, W)``.

    ``mask='channel'``: x₁ is the first ⌊C/2⌋ channels (``parity`` 0) or the last ⌊C/2⌋
    (``parity`` 1); the network maps ``(B, ⌊C/2⌋, H, W)`` to the parameters of the other
    ``C − ⌊C/2⌋`` channels. ``mask='checkerboard'``: x₁ is the positions where
    (i + j) % 2 == ``parity``; the network sees the masked image ``x ⊙ m`` (all C channels) and
    returns parameters for every position, of which only the others are used.
    """

    def __init__(
        self,
        num_channels: int,
        elementwise: MapFactory,
        conditioner: NetFactory,
        mask: Literal["checkerboard", "channel"] = "channel",
        parity: int = 0,
    ) -> None:
        super().__init__()
        if mask not in ("checkerboard", "channel") or parity not in (0, 1):
            raise ValueError(f"mask must be checkerboard|channel and parity 0|1: {mask}, {parity}")
        if mask == "channel" and num_channels < 2:
            raise ValueError("a channel coupling needs at least 2 channels")
        self.num_channels, self.mask, self.parity = num_channels, mask, parity
        half, rest = num_channels // 2, num_channels - num_channels // 2  # |x₁|, |x₂|
        self.split_sizes = (half, rest) if parity == 0 else (rest, half)
        n_in, n_out = (num_channels, num_channels) if mask == "checkerboard" else (half, rest)
        self.map = elementwise(n_out)
        self.conditioner = conditioner(n_in, self.map.num_params * n_out)

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.num_channels:
            raise InputOutsideDomainError(
                f"ImageCoupling({self.num_channels} channels) got shape {tuple(x.shape)}"
            )

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        self._check(x)
        apply = self.map.inverse if inverse else self.map
        if self.mask == "checkerboard":
            m = checkerboard_mask(x.shape[2], x.shape[3], self.parity).to(x.device, x.dtype)
            y_all, log_deriv = apply(x, run_network(self.conditioner, x * m))
            y = m * x + (1 - m) * y_all
            return y, _ldj(None if log_deriv is None else (1 - m) * log_deriv, x)
        a, b = x.split(self.split_sizes, dim=1)
        x1, x2 = (a, b) if self.parity == 0 else (b, a)  # parity 1: x₁ is the second block
        y2, log_deriv = apply(x2, run_network(self.conditioner, x1))
        y = torch.cat([x1, y2] if self.parity == 0 else [y2, x1], dim=1)
        return y, _ldj(log_deriv, x)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, inverse=True)

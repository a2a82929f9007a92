"""Monotone elementwise maps of the real line, y = f(x; p), apart from how p is produced.

A map does not know where its parameters come from: a coupling layer computes them from the
unchanged half of its input, an autoregressive layer from the features before each one, a
free layer holds them as parameters. Each map declares how many parameters it needs per
element (``num_params``), so every conditioning scheme sizes its own network
(``num_params · num_features`` outputs). This is what :class:`~common.flows.circle.CircleMap`
does for the circle, and zuko's univariate transforms for the line.

**Parameter layout.** For inputs ``x`` of shape ``(B, n, *rest)`` (``n`` features or channels,
then positions if any), ``params`` has shape ``(B, P·n, *rest)`` and is *block-major*: block
``k`` (``params[:, k·n:(k+1)·n]``) holds the k-th parameter of every element. A conditioner's
output splits into the blocks with ``chunk`` (views, no copy) along dimension 1.

Every map returns ``(y, log_deriv)`` with ``log_deriv = log |dy/dx|`` elementwise (``inverse``:
``log |dx/dy|``), or ``None`` for a volume-preserving map (:class:`Additive`), so that callers
skip the sum. All parameters at zero give the identity, except :class:`SigmoidAffine`, which
starts at the scale σ(2) ≈ 0.88 as in the Glow authors' code.

References: Dinh et al., NICE (arXiv:1410.8516) Eq. (4); Dinh et al., RealNVP
(arXiv:1605.08803) Eq. (6)-(7); Kingma & Dhariwal, Glow (arXiv:1807.03039) Sec. 3.3; Durkan
et al., Neural Spline Flows (arXiv:1906.04032) Sec. 3.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.flows.bijector import per_channel
from common.flows.splines import MIN_DERIVATIVE, rational_quadratic_spline

__all__ = [
    "Additive",
    "Affine",
    "ElementwiseMap",
    "LearnedBoundAffine",
    "MapFactory",
    "RationalQuadraticSpline",
    "SigmoidAffine",
]


class ElementwiseMap(nn.Module):
    """A monotone increasing map applied to each of ``num_features`` features, with
    ``num_params`` parameters per element supplied by the caller (layout: module docstring).

    Subclasses implement :meth:`forward` (y = f(x; p)) and :meth:`inverse` (x = f⁻¹(y; p)),
    both returning ``(output, log |d output / d input| or None)``. A map may hold learned
    state of its own (e.g. a per-feature bound) as parameters; it never holds ``p``.
    """

    num_params: int

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


MapFactory = Callable[[int], ElementwiseMap]
"""Builds the map for a given number of features: a map class, or a ``functools.partial``."""


class Additive(ElementwiseMap):
    """y = x + t (NICE, Eq. (4)); volume preserving. p = [t]."""

    num_params = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, None]:
        return x + params, None

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, None]:
        return y - params, None


class Affine(ElementwiseMap):
    """y = x · exp(s) + t with a bounded log-scale s = c · tanh(ŝ / c) (``scale_bound`` = c;
    ``None``: s = ŝ, unbounded). The bound keeps early training stable. p = [ŝ, t];
    log dy/dx = s."""

    num_params = 2

    def __init__(self, num_features: int, scale_bound: float | None = 2.0) -> None:
        super().__init__(num_features)
        self.scale_bound = scale_bound

    def log_scale(self, raw: Tensor) -> Tensor:
        if self.scale_bound is None:
            return raw
        return self.scale_bound * torch.tanh(raw / self.scale_bound)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = params.chunk(2, dim=1)
        s = self.log_scale(raw)
        # not torch.addcmul: its fused multiply-add rounds differently, which would change the
        # training trajectories (and committed numbers) of every flow using this map
        return x * s.exp() + shift, s

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = params.chunk(2, dim=1)
        s = self.log_scale(raw)
        return (y - shift) * (-s).exp(), -s


class LearnedBoundAffine(Affine):
    """RealNVP's affine map (Eq. (7), as in the authors' code): s = a · tanh(ŝ), with a learned
    bound a per feature (initialised to 1). p = [ŝ, t]."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, scale_bound=None)
        self.bound = nn.Parameter(torch.ones(num_features))

    def log_scale(self, raw: Tensor) -> Tensor:
        return per_channel(self.bound, raw) * torch.tanh(raw)


class SigmoidAffine(ElementwiseMap):
    """Glow's affine map (the authors' code): y = (x + t) · σ(ŝ + 2). The scale never exceeds
    1, and is σ(2) ≈ 0.88 at ŝ = 0. p = [ŝ, t]; log dy/dx = log σ(ŝ + 2)."""

    num_params = 2

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = params.chunk(2, dim=1)
        log_s = F.logsigmoid(raw + 2.0)
        return (x + shift) * log_s.exp(), log_s

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = params.chunk(2, dim=1)
        log_s = F.logsigmoid(raw + 2.0)
        return y * (-log_s).exp() - shift, -log_s


# softplus(c) + MIN_DERIVATIVE = 1: a zero parameter gives a unit knot derivative
_UNIT_DERIVATIVE = math.log(math.expm1(1 - MIN_DERIVATIVE))


class RationalQuadraticSpline(ElementwiseMap):
    """Monotone rational-quadratic spline on [−B, B] with ``num_bins`` = K bins and linear
    tails (the identity outside; Durkan et al. 2019, Sec. 3.1 and App. A.3): the end knots'
    derivatives are 1, so the map is C¹ at ±B. p = [widths (K), heights (K), interior knot
    derivatives (K − 1)], ``3K − 1`` per element; all zeros give the identity (equal bins,
    unit derivatives). The inverse is closed form (a quadratic per element)."""

    def __init__(self, num_features: int, num_bins: int = 8, bound: float = 3.0) -> None:
        super().__init__(num_features)
        self.num_bins, self.bound = num_bins, bound
        self.num_params = 3 * num_bins - 1

    def _spline(self, x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        K, B = self.num_bins, self.bound
        p = params.unflatten(1, (self.num_params, -1)).movedim(1, -1)  # (B, n, *rest, P)
        ones = torch.full_like(p[..., :1], _UNIT_DERIVATIVE)
        derivs = torch.cat([ones, p[..., 2 * K :] + _UNIT_DERIVATIVE, ones], dim=-1)
        inside = (x > -B) & (x < B)
        x_in = x.clamp(-B, B)  # tails: evaluated at the boundary, then replaced
        y, log_deriv = rational_quadratic_spline(
            x_in, p[..., :K], p[..., K : 2 * K], derivs, (-B, B), inverse
        )
        return torch.where(inside, y, x), torch.where(inside, log_deriv, 0.0)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(x, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._spline(y, params, inverse=True)

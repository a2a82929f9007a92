"""Monotone rational-quadratic splines (Durkan et al., "Neural Spline Flows", NeurIPS 2019,
arXiv:1906.04032, Sec. 3.1; Gregory & Delbourgo 1982), on an interval and on the circle.

The spline maps [left, right] onto [bottom, top] through K bins with knots (x_k, y_k) and
positive knot derivatives d_k. In bin k, with s_k = h_k / w_k and ξ = (x − x_k) / w_k ∈ [0, 1],

    y = y_k + h_k [s_k ξ² + d_k ξ(1 − ξ)] / [s_k + (d_{k+1} + d_k − 2 s_k) ξ(1 − ξ)]      (Eq. 4)
    dy/dx = s_k² [d_{k+1} ξ² + 2 s_k ξ(1 − ξ) + d_k (1 − ξ)²] / [s_k + (…) ξ(1 − ξ)]²

and the inverse solves a quadratic in ξ (Eq. 6-8). On the circle (Rezende et al. 2020,
Sec. 2.2) the interval is [0, 2π] on both sides and d_K = d_0, so the map and its derivative
are periodic: a smooth diffeomorphism of the circle with f(0) = 0
(:class:`common.flows.circle.CircularSplineMap`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rational_quadratic_spline", "spline_knots"]

MIN_BIN = 1e-3  # smallest bin width/height, as a fraction of the interval
MIN_DERIVATIVE = 1e-3


def spline_knots(raw: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """Knot positions ``(..., K+1)`` and bin sizes ``(..., K)`` on [low, high] from
    unconstrained ``(..., K)`` values (softmax, then a floor of ``MIN_BIN`` per bin)."""
    K = raw.shape[-1]
    fractions = MIN_BIN + (1 - MIN_BIN * K) * torch.softmax(raw, dim=-1)
    inner = low + (high - low) * torch.cumsum(fractions, dim=-1)[..., :-1]
    # the end knots exactly at the interval's ends, whatever the rounding of the cumsum
    knots = torch.cat([torch.full_like(inner[..., :1], low), inner,
                       torch.full_like(inner[..., :1], high)], dim=-1)  # fmt: skip
    return knots, knots.diff(dim=-1)


def rational_quadratic_spline(
    x: Tensor,
    raw_widths: Tensor,
    raw_heights: Tensor,
    raw_derivatives: Tensor,
    interval: tuple[float, float],
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Apply the spline (or its inverse) elementwise; returns the output and log |dy/dx| at
    ``x`` (forward) or log |dx/dy| (inverse). ``x``: ``(...)`` inside ``interval`` (the same
    interval on both sides); raw widths and heights ``(..., K)``; raw derivatives
    ``(..., K+1)`` (softplus + ``MIN_DERIVATIVE``)."""
    low, high = interval
    xs, widths = spline_knots(raw_widths, low, high)
    ys, heights = spline_knots(raw_heights, low, high)
    derivs = MIN_DERIVATIVE + F.softplus(raw_derivatives)
    knots = ys if inverse else xs
    idx = torch.searchsorted(knots[..., 1:-1].contiguous(), x.unsqueeze(-1).contiguous())

    def pick(t: Tensor, offset: int = 0) -> Tensor:
        return t.gather(-1, idx + offset).squeeze(-1)

    x_k, w_k, y_k, h_k = pick(xs), pick(widths), pick(ys), pick(heights)
    d_k, d_k1 = pick(derivs), pick(derivs, 1)
    s_k = h_k / w_k
    if not inverse:
        xi = ((x - x_k) / w_k).clamp(0, 1)
        out = y_k + h_k * (s_k * xi**2 + d_k * xi * (1 - xi)) / (
            s_k + (d_k1 + d_k - 2 * s_k) * xi * (1 - xi)
        )
    else:
        dy, c2 = x - y_k, d_k1 + d_k - 2 * s_k  # Eq. (6)-(8)
        a = h_k * (s_k - d_k) + dy * c2
        b = h_k * d_k - dy * c2
        c = -s_k * dy
        disc = (b**2 - 4 * a * c).clamp_min(0)
        xi = ((2 * c) / (-b - disc.sqrt())).clamp(0, 1)
        out = x_k + xi * w_k
    denom = s_k + (d_k1 + d_k - 2 * s_k) * xi * (1 - xi)
    numer = s_k**2 * (d_k1 * xi**2 + 2 * s_k * xi * (1 - xi) + d_k * (1 - xi) ** 2)
    log_deriv = torch.log(numer) - 2 * torch.log(denom)
    return out, (-log_deriv if inverse else log_deriv)

"""Dequantization as layers, the logit preprocessing, and bits per dimension.

Discrete data x ∈ {0, …, n−1}^D is modelled by a density p on [0, 1)^D through
y = (x + u)/n, u ~ U[0, 1)^D. Jensen's inequality gives the variational bound
(Theis et al. 2016, arXiv:1511.01844; Ho et al. 2019, Flow++, Sec. 3.1)

    log P(x) ≥ E_u[ log p(y) ] − D · log n,

so the layer's ldj is the constant −D·log n. A uniform density on [0, 1)^D therefore scores
exactly log2(n) bits per dimension: 8 for 8-bit images, log2 17 for scikit-learn digits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from common.flows.bijector import Bijector, InputOutsideDomainError, sum_except_batch

__all__ = ["Logit", "UniformDequantization", "bits_per_dim"]


def bits_per_dim(log_prob: Tensor, num_dims: int) -> Tensor:
    """Bits per dimension −log p(x) / (D · ln 2) from a log-likelihood in nats.

    ``log_prob`` is the log-likelihood of the *discrete* data (dequantization ldj included);
    any shape, returned elementwise. This is the only bits/dim formula in the repository.
    """
    return -log_prob / (num_dims * math.log(2.0))


class UniformDequantization(Bijector):
    """Uniform dequantization of ``num_levels``-level data: y = (x + u)/n, ldj = −D·log n.

    ``forward`` takes integer levels (any dtype) of shape ``(B, ...)`` and returns floats in
    [0, 1); it draws u from the global torch RNG, so a seeded run is reproducible.
    ``inverse`` maps y back to floor(n·y), clamped to the valid levels, with ldj = +D·log n.
    """

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"num_levels must be at least 2, got {num_levels}")
        self.num_levels = num_levels

    def _ldj(self, t: Tensor) -> Tensor:
        num_dims = t[0].numel()
        return t.new_full((t.shape[0],), -num_dims * math.log(self.num_levels))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = x.to(torch.get_default_dtype()) if not x.is_floating_point() else x
        bad = (x < 0) | (x > self.num_levels - 1) | (x != x.round())
        if bad.any():
            raise InputOutsideDomainError(
                f"{type(self).__name__}(num_levels={self.num_levels}) expects integers in "
                f"[0, {self.num_levels - 1}]; got values such as {x[bad].flatten()[:3].tolist()}"
            )
        y = (x + torch.rand_like(x)) / self.num_levels
        return y, self._ldj(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = torch.floor(y * self.num_levels).clamp(0, self.num_levels - 1)
        return x, -self._ldj(y)


class Logit(Bijector):
    """y = logit(α + (1 − 2α)·x) for x ∈ [0, 1] (Dinh et al. 2017, Sec. 4.1, as in the authors'
    code; the paper text writes α + (1 − α)x). α keeps the logit away from ±∞ at 0 and 1.

    ldj = Σ_d [log(1 − 2α) − log s_d − log(1 − s_d)],  s = α + (1 − 2α)x.

    The inverse's ldj is written with log-sigmoids, log s = log σ(y) and log(1 − s) =
    log σ(−y): σ(y) rounds to 1 in float32 for y ≳ 17, where log(1 − σ(y)) would be −∞.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def _ldj(self, s: Tensor) -> Tensor:
        return sum_except_batch(math.log1p(-2 * self.alpha) - torch.log(s) - torch.log1p(-s))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not ((x >= 0) & (x <= 1)).all():  # written so that NaN is outside too
            raise InputOutsideDomainError(
                f"Logit expects inputs in [0, 1]; got range "
                f"[{x.min().item():.4g}, {x.max().item():.4g}]"
            )
        s = self.alpha + (1 - 2 * self.alpha) * x
        return torch.log(s) - torch.log1p(-s), self._ldj(s)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
        log_s, log_1ms = F.logsigmoid(y), F.logsigmoid(-y)
        return x, sum_except_batch(log_s + log_1ms - math.log1p(-2 * self.alpha))

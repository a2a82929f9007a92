"""A flow model: an optional dequantization layer, a bijector and a base distribution.

    log p(x) = log p_base(z) + ldj_transform(y) + ldj_dequant(x),   y = dequant(x), z = f(y)

Dequantization is a layer with its own ldj (e.g. −D·log n for n-level data), so the
likelihood of discrete data — and hence bits/dim — needs no dataset constant elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.flows.bijector import Bijector, values_only
from common.flows.distributions import BaseDistribution

__all__ = ["Flow", "LogProb"]


@dataclass
class LogProb:
    """Parts of log p(x), each of shape ``(B,)`` in nats."""

    total: Tensor  # log p(x): the discrete-data log-likelihood if dequantized
    dequant_ldj: Tensor  # the dequantization layer's ldj (zeros without one)

    @property
    def continuous(self) -> Tensor:
        """log-density of the dequantized (continuous) data, the unit NICE reports in."""
        return self.total - self.dequant_ldj


class Flow(nn.Module):
    """``Flow(transform, base, dequantization=None)``; all three are modules, so ``.to(device)``
    moves the whole model and ``state_dict`` holds everything it needs."""

    def __init__(
        self,
        transform: Bijector,
        base: BaseDistribution,
        dequantization: Bijector | None = None,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.base = base
        self.dequantization = dequantization

    def dequantize(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """y = dequant(x) and its ldj ``(B,)`` (x itself and zeros without a dequantization
        layer). Draws the dequantization noise: kept apart from :meth:`log_prob_continuous`
        so that a compiled loss can leave the random draw in eager mode."""
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        if self.dequantization is None:
            return x, x.new_zeros(x.shape[0], dtype=dtype)  # integer data: default float
        return self.dequantization(x, context)

    def log_prob_continuous(
        self, y: Tensor, dequant_ldj: Tensor, context: Tensor | None = None
    ) -> Tensor:
        """log p(x) = log p_base(f(y)) + ldj_f(y) + ``dequant_ldj`` for dequantized ``y``."""
        z, ldj = self.transform(y, context)
        return self.base.log_prob(z) + ldj + dequant_ldj

    def log_prob_parts(self, x: Tensor, context: Tensor | None = None) -> LogProb:
        """log p(x) and its dequantization part; ``x`` is ``(B, ...)``."""
        y, dequant_ldj = self.dequantize(x, context)
        total = self.log_prob_continuous(y, dequant_ldj, context)
        return LogProb(total=total, dequant_ldj=dequant_ldj)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(x), shape ``(B,)``, in nats."""
        return self.log_prob_parts(x, context).total

    def penalty(self) -> Tensor:
        """The regulariser the trainer adds to the NLL: the sum of ``penalty()`` over every
        submodule that defines one (e.g. RealNVP's L2 on weight-norm scales), else 0."""
        terms = [m.penalty() for m in self.modules() if m is not self and hasattr(m, "penalty")]
        return sum(terms, self.base._anchor.new_zeros(()))

    def sample_with_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``n`` reparametrised samples x = f⁻¹(z), z ~ base, and log q(x) = log p_base(z) −
        log |det ∂x/∂z|, both differentiable w.r.t. the parameters: what reverse-KL training
        needs. Flows on continuous data only (no dequantization)."""
        return self.from_base(self.base.sample(n), context)

    def from_base(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x = f⁻¹(z) for base samples ``z`` and log q(x) = log p_base(z) − log |det ∂x/∂z|
        (differentiable; the random draw stays outside, e.g. for ``torch.compile``)."""
        if self.dequantization is not None:
            raise ValueError("from_base needs a flow without dequantization")
        x, ldj = self.transform.inverse(z, context)
        return x, self.base.log_prob(z) - ldj

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, context: Tensor | None = None) -> Tensor:
        """``n`` samples in data space (discrete levels if the flow dequantizes)."""
        z = self.base.sample(n, temperature)
        with values_only(self.transform):  # the ldj is discarded: costly ones are skipped
            x, _ = self.transform.inverse(z, context)
        if self.dequantization is not None:
            x, _ = self.dequantization.inverse(x, context)
        return x

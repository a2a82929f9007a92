"""Base distributions: standard Gaussian and standard logistic.

Each is an ``nn.Module`` with a zero-size buffer that tells it its device and dtype, so
``sample`` allocates where the model lives. ``log_prob`` sums over the event shape and
returns ``(B,)`` in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.flows.bijector import sum_except_batch

__all__ = ["BaseDistribution", "StandardLogistic", "StandardNormal"]


class BaseDistribution(nn.Module):
    """A fixed distribution over tensors of shape ``event_shape``."""

    def __init__(self, event_shape: tuple[int, ...] | int) -> None:
        super().__init__()
        self.event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        # Non-persistent: carries device/dtype only, never enters a checkpoint.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) for ``z`` of shape ``(B, *event_shape)``; returns ``(B,)``."""
        raise NotImplementedError

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` samples of shape ``(n, *event_shape)``; ``temperature`` scales the spread
        (Glow, Sec. 5: sampling at T < 1 trades diversity for fidelity)."""
        raise NotImplementedError

    def _check(self, z: Tensor) -> None:
        if tuple(z.shape[1:]) != self.event_shape:
            raise ValueError(
                f"{type(self).__name__} expects (B, {self.event_shape}), got {tuple(z.shape)}"
            )


class StandardNormal(BaseDistribution):
    """N(0, I): log p(z) = -½ Σ_d (z_d² + log 2π)."""

    def log_prob(self, z: Tensor) -> Tensor:
        self._check(z)
        return sum_except_batch(-0.5 * (z**2 + math.log(2 * math.pi)))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        a = self._anchor
        return temperature * torch.randn(n, *self.event_shape, device=a.device, dtype=a.dtype)


class StandardLogistic(BaseDistribution):
    """Standard logistic, NICE's prior (Dinh et al. 2014, Sec. 3.4):
    log p(z) = -Σ_d [log(1 + e^{z_d}) + log(1 + e^{-z_d})] = -Σ_d [softplus(z_d) + softplus(-z_d)].
    Sampled by the inverse CDF, z = log u - log(1 - u)."""

    def log_prob(self, z: Tensor) -> Tensor:
        self._check(z)
        return -sum_except_batch(F.softplus(z) + F.softplus(-z))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        a = self._anchor
        # Clamp u away from {0, 1} so float32 never produces ±inf.
        eps = torch.finfo(a.dtype).eps
        u = torch.rand(n, *self.event_shape, device=a.device, dtype=a.dtype).clamp(eps, 1 - eps)
        return temperature * (torch.log(u) - torch.log1p(-u))

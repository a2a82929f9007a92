"""A variational autoencoder whose posterior is a flow (the IAF paper's model).

Kingma & Welling, "Auto-Encoding Variational Bayes" (arXiv:1312.6114); Rezende & Mohamed,
"Variational Inference with Normalizing Flows" (arXiv:1505.05770); Kingma et al., "Improved
Variational Inference with Inverse Autoregressive Flow" (arXiv:1606.04934), Sec. 3-4.

The posterior starts from a diagonal Gaussian and moves its sample through a flow conditioned
on the encoder's context h(x) (IAF steps, whose fast direction is sampling):

    z₀ = μ(x) + σ(x) ⊙ ε,  ε ~ N(0, I),    z = f(z₀; h(x)),
    log q(z | x) = log N(ε; 0, I) − Σ log σ(x) − log |det ∂z/∂z₀|,

with a standard-normal prior and a Bernoulli decoder p(x | z). Each posterior sample gives a
log-weight log w = log p(x | z) + log p(z) − log q(z | x); the ELBO is E[log w] and
log p(x) ≈ log (1/K) Σ_k w_k is the importance-sampled likelihood (Burda et al. 2016, IWAE,
Eq. (8); biased low, less so as K grows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.flows.bijector import Bijector

__all__ = ["VAE"]


def _standard_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)


class VAE(nn.Module):
    """``encoder``: ``(B, D) → (B, 2L + C)`` (μ, log σ and the context h); ``decoder``:
    ``(B, L) → (B, D)`` Bernoulli logits; ``posterior``: a flow on ``(B, L)`` with context
    ``(B, C)`` whose ``inverse`` maps z₀ to z (None: the diagonal Gaussian alone)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        posterior: Bijector | None,
        latent_features: int,
        context_features: int = 0,
    ) -> None:
        super().__init__()
        self.encoder, self.decoder, self.posterior = encoder, decoder, posterior
        self.latent_features, self.context_features = latent_features, context_features
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def posterior_sample(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """z ~ q(z | x) from the base noise ``eps`` ``(K, B, L)`` for ``x`` ``(B, D)``:
        returns z ``(K, B, L)`` and log q(z | x) ``(K, B)``."""
        L, C = self.latent_features, self.context_features
        mu, log_sigma, h = self.encoder(x).split([L, L, C], dim=1)
        K, B = eps.shape[:2]
        z = mu + log_sigma.exp() * eps
        log_q = _standard_normal_log_prob(eps) - log_sigma.sum(-1)
        if self.posterior is not None:
            context = h.expand(K, B, C).reshape(K * B, C) if C else None
            z, ldj = self.posterior.inverse(z.reshape(K * B, L), context)
            z, log_q = z.reshape(K, B, L), log_q - ldj.reshape(K, B)
        return z, log_q

    def log_weights(self, x: Tensor, eps: Tensor) -> Tensor:
        """log w = log p(x | z) + log p(z) − log q(z | x), ``(K, B)``, for binary ``x``
        ``(B, D)`` and one posterior sample per row of ``eps`` ``(K, B, L)``."""
        z, log_q = self.posterior_sample(x, eps)
        logits = self.decoder(z)  # (K, B, D)
        target = x.expand_as(logits)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
        return log_px_z + _standard_normal_log_prob(z) - log_q

    def penalty(self) -> Tensor:
        """No regulariser (the training loop adds ``penalty()`` to every loss)."""
        return self._anchor.new_zeros(())

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Decoder means E[x | z] ``(n, D)`` at ``n`` draws z ~ p(z)."""
        a = self._anchor
        z = torch.randn(n, self.latent_features, device=a.device, dtype=a.dtype)
        return torch.sigmoid(self.decoder(z))

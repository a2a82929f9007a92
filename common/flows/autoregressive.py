"""Autoregressive flows: MADE, the masked autoregressive layer (MAF, IAF) and MADE MoG.

An autoregressive map moves each feature by an elementwise map whose parameters depend only on
the features *before* it in an order π (Germain et al., MADE, arXiv:1502.03509; Papamakarios,
Pavlakou & Murray, MAF, arXiv:1705.07057, Sec. 3; Kingma et al., IAF, arXiv:1606.04934):

    z_d = f(x_d; p_d(x_{<d})),    ldj = Σ_d log |∂f/∂x_d|,

since the Jacobian is triangular in the order π. All the p_d come from one pass of a MADE: a
network whose weight masks cut every path from x_j to p_d unless j comes before d.

- :class:`MADE`: masked linear layers with sequential or random degrees (Germain et al.,
  Sec. 4), any number of hidden layers, optional context inputs (conditional MADE); outputs
  block-major, as every elementwise map takes them (:mod:`common.flows.elementwise`).
- :class:`MaskedAutoregressive`: any elementwise map under a MADE. ``forward`` (data → latent)
  is one MADE pass (MAF's density direction); ``inverse`` needs D passes. Affine gives MAF,
  the rational-quadratic spline an autoregressive neural spline flow.
- :class:`InverseAutoregressive`: the same layer written in the sampling direction (IAF):
  sampling is one pass, evaluating a given x takes D. With :class:`GatedAffine`, IAF's
  update z ← σ ⊙ z + (1 − σ) ⊙ m (IAF, Algorithm 1).
- :class:`MADEMoG`: the mixture-of-Gaussians autoregressive density (MAF, Sec. 3.3; "MADE
  MoG"), a base distribution, so MAF MoG is MAF layers over it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.flows.bijector import Bijector, InputOutsideDomainError, Inverse, sum_except_batch
from common.flows.distributions import BaseDistribution
from common.flows.elementwise import ElementwiseMap, MapFactory

__all__ = [
    "GatedAffine",
    "InverseAutoregressive",
    "MADE",
    "MADEMoG",
    "MaskedAutoregressive",
    "MaskedLinear",
    "made_degrees",
    "masked_weights_once",
]

Degrees = Literal["sequential", "random"]
# ReLU in place: its backward needs only its output, and the linear map before it keeps no
# use of its own output, so no allocation is needed for the activations
_ACTIVATIONS = {"relu": partial(nn.ReLU, inplace=True), "tanh": nn.Tanh, "elu": nn.ELU}


class MaskedLinear(nn.Linear):
    """y = x (W ⊙ M)ᵀ + b with a fixed 0/1 mask ``M`` of shape ``(out, in)`` (a buffer).

    Inside :func:`masked_weights_once`, W ⊙ M is formed once and reused by every call (the D
    passes of an autoregressive inverse), instead of once per call."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        if mask.shape != (out_features, in_features):
            raise ValueError(f"mask shape {tuple(mask.shape)} != {(out_features, in_features)}")
        self.register_buffer("mask", mask.to(self.weight.dtype))
        self._masked: Tensor | None = None  # W ⊙ M while masked_weights_once is active

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight * self.mask if self._masked is None else self._masked
        return F.linear(x, weight, self.bias)


@contextmanager
def masked_weights_once(module: nn.Module) -> Iterator[None]:
    """Within the block, every :class:`MaskedLinear` of ``module`` uses W ⊙ M formed on entry:
    the weights must not change inside it (they do not during an inverse's D passes). The
    product stays in the autograd graph, so gradients through the passes are unchanged."""
    layers = [m for m in module.modules() if isinstance(m, MaskedLinear)]
    for m in layers:
        m._masked = m.weight * m.mask
    try:
        yield
    finally:
        for m in layers:
            m._masked = None


def made_degrees(
    order: Tensor, hidden: list[int], degrees: Degrees, generator: torch.Generator
) -> list[Tensor]:
    """Degrees of the inputs and of every hidden layer (Germain et al. 2015, Sec. 4).

    Input j has degree m(j) = π(j) + 1 ∈ {1, …, D}, its position in the order. A hidden unit
    of degree k may see inputs of degree ≤ k; an output of degree m(d) only hidden units of
    degree < m(d). Hidden degrees lie in {1, …, D − 1}: ``sequential`` cycles through them
    (k mod (D − 1) + 1, every connection the order allows is present once a layer has D − 1
    units), ``random`` draws each uniformly from {min of the previous layer, …, D − 1}.
    """
    D = len(order)
    top = max(D - 1, 1)
    out = [order + 1]
    for width in hidden:
        if degrees == "sequential":
            m = torch.arange(width) % top + 1
        elif degrees == "random":
            low = min(int(out[-1].min()), top)
            m = torch.randint(low, top + 1, (width,), generator=generator)
        else:
            raise ValueError(f"degrees must be 'sequential' or 'random', got {degrees!r}")
        out.append(m)
    return out


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015): a fully connected
    network ``(B, D) → (B, P·D)`` whose output ``k·D + d`` (parameter k of feature d,
    block-major) depends on the inputs before d in ``order`` only.

    ``order``: ``(D,)`` the position of each feature in the autoregressive order (default
    0, 1, …, D − 1; ``order.flip(0)`` reverses it). ``context_features`` C > 0 makes it
    conditional: the context ``(B, C)`` (degree 0) feeds every first-layer unit and, through a
    linear map, every output (so the first feature's parameters depend on it too).
    ``zero_init`` zeroes the output layer, so that the enclosing layer starts as the identity
    of its map (leave it off where the outputs must differ from the start, as a mixture's
    components must). Random degrees come from a generator seeded with ``seed``.
    """

    def __init__(
        self,
        num_features: int,
        num_params: int,
        hidden_features: int,
        num_hidden: int = 2,
        order: Tensor | None = None,
        degrees: Degrees = "sequential",
        context_features: int = 0,
        activation: str = "relu",
        zero_init: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {sorted(_ACTIVATIONS)}")
        if num_hidden < 1:
            raise ValueError("a MADE needs at least one hidden layer")
        D = num_features
        order = torch.arange(D) if order is None else torch.as_tensor(order, dtype=torch.long)
        if not torch.equal(order.sort().values, torch.arange(D)):
            raise ValueError(f"order must be a permutation of 0..{D - 1}, got {order.tolist()}")
        self.num_features, self.num_params = D, num_params
        g = torch.Generator().manual_seed(seed)
        m = made_degrees(order, [hidden_features] * num_hidden, degrees, g)
        self.register_buffer("order", order)
        layers: list[nn.Module] = []
        for m_in, m_out in zip(m[:-1], m[1:], strict=True):
            mask = m_out[:, None] >= m_in[None, :]
            layers += [MaskedLinear(len(m_in), len(m_out), mask), _ACTIVATIONS[activation]()]
        self.hidden = nn.Sequential(*layers)
        out_degrees = m[0].repeat(num_params)  # output k·D + d has the degree of input d
        self.output = MaskedLinear(hidden_features, num_params * D,
                                   out_degrees[:, None] > m[-1][None, :])  # fmt: skip
        self.context_features = context_features
        if context_features:
            self.context_hidden = nn.Linear(context_features, hidden_features, bias=False)
            self.context_output = nn.Linear(context_features, num_params * D, bias=False)
        if zero_init:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)
            if context_features:
                nn.init.zeros_(self.context_output.weight)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise InputOutsideDomainError(
                f"MADE({self.num_features} features) got shape {tuple(x.shape)}"
            )
        if (context is None) != (self.context_features == 0):
            raise ValueError(
                f"this MADE takes {self.context_features} context features; got "
                f"{'none' if context is None else tuple(context.shape)}"
            )
        first, *rest = self.hidden
        h = first(x)
        if context is not None:
            h = h + self.context_hidden(context)
        for layer in rest:
            h = layer(h)
        out = self.output(h)
        if context is not None:
            out = out + self.context_output(context)
        return out


class MaskedAutoregressive(Bijector):
    """z = f(x; MADE(x)): an elementwise map (:mod:`common.flows.elementwise`) whose
    parameters for feature d come from the features before d in ``order`` (MAF, Sec. 3.1,
    with f affine: z = (x − μ) exp(−α) up to the map's parametrisation).

    ``forward``, the density direction, is one MADE pass. ``inverse`` runs D passes: pass k
    computes every feature from the current estimate, and the features whose predecessors are
    all exact after pass k − 1 (the k-th in the order) become exact, so D passes give x
    exactly, with the ldj of the last pass. Shapes: ``(B, D) → (B, D)``; ``context (B, C)``.
    The remaining arguments are :class:`MADE`'s.
    """

    def __init__(
        self,
        num_features: int,
        elementwise: MapFactory,
        hidden_features: int,
        num_hidden: int = 2,
        order: Tensor | None = None,
        degrees: Degrees = "sequential",
        context_features: int = 0,
        activation: str = "relu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.map: ElementwiseMap = elementwise(num_features)
        self.made = MADE(
            num_features, self.map.num_params, hidden_features, num_hidden, order, degrees,
            context_features, activation, zero_init=True, seed=seed,
        )  # fmt: skip

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_deriv = self.map(x, self.made(x, context))
        return z, _ldj(log_deriv, x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if z.ndim != 2 or z.shape[1] != self.num_features:
            raise InputOutsideDomainError(
                f"MaskedAutoregressive({self.num_features} features) got shape {tuple(z.shape)}"
            )
        x, log_deriv = torch.zeros_like(z), None
        with masked_weights_once(self.made):
            for _ in range(self.num_features):
                x, log_deriv = self.map.inverse(z, self.made(x, context))
        return x, _ldj(log_deriv, z)


def _ldj(log_deriv: Tensor | None, like: Tensor) -> Tensor:
    return like.new_zeros(like.shape[0]) if log_deriv is None else sum_except_batch(log_deriv)


class InverseAutoregressive(Inverse):
    """An IAF step (Kingma et al. 2016, Sec. 4): a :class:`MaskedAutoregressive` layer used in
    the sampling direction, x = f(u; MADE(u, h)), so that drawing a sample is one MADE pass and
    evaluating the density of a given x takes D. ``forward`` (data → latent) is the slow
    direction, ``inverse`` (latent → data) the fast one. Pass :class:`GatedAffine` as the map
    for IAF's gated update, ``context_features`` for a posterior conditioned on the
    encoder's h. Arguments as :class:`MaskedAutoregressive`."""

    def __init__(self, num_features: int, elementwise: MapFactory, hidden_features: int,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(MaskedAutoregressive(num_features, elementwise, hidden_features, **kwargs))


class GatedAffine(ElementwiseMap):
    """IAF's gated update (Kingma et al. 2016, Algorithm 1 and Eq. (14)):
    y = σ ⊙ x + (1 − σ) ⊙ m with σ = sigmoid(ŝ + b); log dy/dx = log σ. p = [ŝ, m].
    ``gate_bias`` b starts σ near 1, the paper's advice ("+1 or +2"); at p = 0, y = σ(b)·x."""

    num_params = 2

    def __init__(self, num_features: int, gate_bias: float = 2.0) -> None:
        super().__init__(num_features)
        self.gate_bias = gate_bias

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raw, m = params.chunk(2, dim=1)
        log_gate = F.logsigmoid(raw + self.gate_bias)
        gate = log_gate.exp()
        return gate * x + (1 - gate) * m, log_gate

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raw, m = params.chunk(2, dim=1)
        log_gate = F.logsigmoid(raw + self.gate_bias)
        # 1 − σ(a) = σ(−a): exact where σ(a) rounds to 1
        return (y - torch.sigmoid(-(raw + self.gate_bias)) * m) * (-log_gate).exp(), -log_gate


class MADEMoG(BaseDistribution):
    """MADE MoG (MAF paper, Sec. 3.3): each conditional a mixture of K Gaussians whose
    weights, means and log-standard deviations come from one MADE pass,

        log p(u) = Σ_d log Σ_k π_dk(u_{<d}) N(u_d; μ_dk(u_{<d}), σ_dk(u_{<d})²).

    Sampling takes D passes with the noise drawn first (a component and an N(0, 1) value per
    feature), so the d-th pass fixes the d-th feature in the order. ``temperature`` T scales
    every σ. The output layer keeps its random initialisation: zero weights would make the K
    components identical, and they would stay so. Shapes: ``(B, D)``.
    """

    def __init__(
        self,
        num_features: int,
        num_components: int,
        hidden_features: int,
        num_hidden: int = 2,
        order: Tensor | None = None,
        degrees: Degrees = "sequential",
        activation: str = "relu",
        seed: int = 0,
    ) -> None:
        super().__init__(num_features)
        self.num_features, self.num_components = num_features, num_components
        self.made = MADE(
            num_features, 3 * num_components, hidden_features, num_hidden, order, degrees,
            activation=activation, zero_init=False, seed=seed,
        )  # fmt: skip

    def _conditionals(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log mixture weights, means and log-stds, each ``(B, K, D)``."""
        K = self.num_components
        p = self.made(u).unflatten(1, (3 * K, self.num_features))
        logits, mu, log_sigma = p.split(K, dim=1)
        return torch.log_softmax(logits, dim=1), mu, log_sigma

    def log_prob(self, z: Tensor) -> Tensor:
        self._check(z)
        log_pi, mu, log_sigma = self._conditionals(z)
        eps = (z.unsqueeze(1) - mu) * (-log_sigma).exp()
        log_normal = -0.5 * eps**2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(log_pi + log_normal, dim=1).sum(1)

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        a, D = self._anchor, self.num_features
        eps = torch.randn(n, D, device=a.device, dtype=a.dtype)
        uniform = torch.rand(n, 1, D, device=a.device, dtype=a.dtype)
        u = torch.zeros(n, D, device=a.device, dtype=a.dtype)
        with masked_weights_once(self.made):
            for _ in range(D):
                log_pi, mu, log_sigma = self._conditionals(u)
                # the component whose CDF interval holds the uniform draw (inverse-CDF sampling)
                k = (log_pi.exp().cumsum(1) < uniform).sum(1, keepdim=True)
                k = k.clamp_max(self.num_components - 1)
                mu_k = mu.gather(1, k).squeeze(1)
                sigma_k = log_sigma.gather(1, k).squeeze(1).exp()
                u = mu_k + temperature * sigma_k * eps
        return u

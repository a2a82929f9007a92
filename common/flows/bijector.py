"""The bijector contract shared by every paper in this repository.

A bijector ``f`` maps data ``x`` to latent ``z`` (the *normalizing* direction)::

    z, ldj = f.forward(x, context)      # ldj = log |det ∂z/∂x|,  shape (B,)
    x, ldj = f.inverse(z, context)      # ldj = log |det ∂x/∂z| = -forward ldj

so that, by the change of variables,

    log p(x) = log p_base(z) + ldj.

``ldj`` is always summed over every non-batch dimension, is in nats, and has shape ``(B,)``.
Both methods always return a tuple; no return type depends on an argument.

A layer whose ldj is a stochastic *estimate* (i-ResNet's power series, FFJORD's Hutchinson
trace) sets ``ldj_is_estimate = True`` and computes the exact ldj inside :func:`exact_ldj`;
it is checked in that exact mode, and its estimator separately for bias
(:func:`common.flows.testing.check_estimator_unbiased`). A layer written in the sampling
direction (its ``forward`` is the closed-form map from base to data, as in IAF and the
manifold flows) is used, and checked, wrapped in :class:`Inverse`.

References: Dinh et al., NICE (arXiv:1410.8516), Eq. (1)-(2); Papamakarios et al., "Normalizing
Flows for Probabilistic Modeling and Inference" (arXiv:1912.02762), Sec. 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = [
    "Bijector",
    "Compose",
    "InputOutsideDomainError",
    "Inverse",
    "InverseNotAvailableError",
    "Permutation",
    "Reverse",
    "exact_ldj",
    "per_channel",
    "sum_except_batch",
]


class InputOutsideDomainError(ValueError):
    """An input lies outside the domain the bijector declares (e.g. logit of a value > 1)."""


class InverseNotAvailableError(NotImplementedError):
    """The bijector has no tractable inverse in this direction."""


@contextmanager
def exact_ldj(module: nn.Module) -> Iterator[None]:
    """Within the block, every layer of ``module`` whose ldj is an estimate computes it
    exactly (the mode ``check_bijector`` runs them in)."""
    layers = [m for m in module.modules() if getattr(m, "ldj_is_estimate", False)]
    before = [m.exact_ldj for m in layers]
    for m in layers:
        m.exact_ldj = True
    try:
        yield
    finally:
        for m, flag in zip(layers, before, strict=True):
            m.exact_ldj = flag


@contextmanager
def values_only(module: nn.Module) -> Iterator[None]:
    """Within the block, layers of ``module`` whose log-det is costly beyond their values
    (``ldj_costly``: integrated traces, power series) skip it and return a zero ldj: for
    callers that discard it, such as :meth:`~common.flows.flow.Flow.sample`."""
    layers = [m for m in module.modules() if getattr(m, "ldj_costly", False)]
    for m in layers:
        m.ldj_unused = True
    try:
        yield
    finally:
        for m in layers:
            m.ldj_unused = False


def per_channel(param: Tensor, like: Tensor) -> Tensor:
    """View a ``(C,)`` tensor so it broadcasts over ``(B, C, *rest)`` (features or channels)."""
    return param.view(1, -1, *([1] * (like.ndim - 2)))


def sum_except_batch(t: Tensor) -> Tensor:
    """Sum a ``(B, ...)`` tensor over every dimension but the first: returns ``(B,)``."""
    return t.reshape(t.shape[0], -1).sum(dim=1)


class Bijector(nn.Module):
    """Base class: an invertible map data → latent with its log-det-Jacobian.

    Subclasses implement :meth:`forward` and :meth:`inverse`; both take ``(B, ...)`` tensors and
    an optional ``context`` (for conditional flows) and return ``(output, ldj)`` with ``ldj`` of
    shape ``(B,)``. All state lives in parameters or buffers, so that ``state_dict`` round trips.
    ``ldj_is_estimate``: the ldj is an unbiased stochastic estimate unless ``exact_ldj`` is on
    (a mode like ``training``, not state: it is set by :func:`exact_ldj`). ``ldj_costly``
    layers return a zero ldj while ``ldj_unused`` is on (set by :func:`values_only`).
    """

    ldj_is_estimate: bool = False
    exact_ldj: bool = False
    ldj_costly: bool = False  # its ldj costs more than its value (see values_only)
    ldj_unused: bool = False

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise InverseNotAvailableError(f"{type(self).__name__} has no inverse")


class Compose(Bijector):
    """Sequential composition ``f_K ∘ … ∘ f_1``; ``forward`` applies ``layers[0]`` first.

    ldj accumulates as a sum starting from the first layer's (an empty composition returns
    ``x.new_zeros``, on the input's device and dtype).
    """

    def __init__(self, *layers: Bijector) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ldj = None  # the first layer's ldj starts the sum: one addition fewer than 0 + …
        for layer in self.layers:
            x, layer_ldj = layer(x, context)
            ldj = layer_ldj if ldj is None else ldj + layer_ldj
        return x, x.new_zeros(x.shape[0]) if ldj is None else ldj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ldj = None
        for layer in reversed(self.layers):
            z, layer_ldj = layer.inverse(z, context)
            ldj = layer_ldj if ldj is None else ldj + layer_ldj
        return z, z.new_zeros(z.shape[0]) if ldj is None else ldj

    def __len__(self) -> int:
        return len(self.layers)


class Inverse(Bijector):
    """The inverse of a bijector: swaps its ``forward`` and ``inverse``. This is how a layer
    written in the sampling direction (IAF; the torus and sphere flows, whose ``forward`` maps
    base to data in closed form) enters a flow, whose ``forward`` maps data to latent."""

    def __init__(self, bijector: Bijector) -> None:
        super().__init__()
        self.bijector = bijector

    def extra_repr(self) -> str:
        return f"sampling-direction layer {type(self.bijector).__name__}"

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijector.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijector.forward(z, context)


class Permutation(Bijector):
    """A fixed permutation of dimension ``dim`` (volume preserving: ldj = 0).

    ``z[..., i] = x[..., perm[i]]`` along ``dim``. The permutation is a buffer, so a saved model
    reloads with the same ordering.
    """

    def __init__(self, perm: Tensor, dim: int = 1) -> None:
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.ndim != 1 or not torch.equal(perm.sort().values, torch.arange(len(perm))):
            raise ValueError(f"not a permutation of 0..{len(perm) - 1}: {perm.tolist()}")
        self.dim = dim
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    @classmethod
    def random(cls, num_features: int, seed: int, dim: int = 1) -> Permutation:
        """A permutation drawn from its own seeded generator (independent of the global RNG)."""
        g = torch.Generator().manual_seed(seed)
        return cls(torch.randperm(num_features, generator=g), dim=dim)

    def _check(self, x: Tensor) -> None:
        if x.shape[self.dim] != len(self.perm):
            raise InputOutsideDomainError(
                f"{type(self).__name__} permutes {len(self.perm)} features along dim {self.dim}, "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return x.index_select(self.dim, self.perm), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        return z.index_select(self.dim, self.inv_perm), z.new_zeros(z.shape[0])


class Reverse(Permutation):
    """Reverse the order of ``num_features`` features along ``dim`` (RealNVP / Glow's baseline)."""

    def __init__(self, num_features: int, dim: int = 1) -> None:
        super().__init__(torch.arange(num_features - 1, -1, -1), dim=dim)

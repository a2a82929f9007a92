"""Autoregressive flows on the torus Tᴰ = [0, 2π)ᴰ (Rezende et al., "Normalizing Flows on Tori
and Spheres", ICML 2020, arXiv:2002.02428, Sec. 3).

Tᴰ = S¹ × … × S¹, so a flow on it can be autoregressive: each coordinate is moved by a circle
flow whose parameters depend on the coordinates before it,

    y_1 = g(θ_1; p_1),    y_d = g(θ_d; c_d(y_1, …, y_{d−1})),   d = 2…D,

with p_1 free parameters and c_d a network reading (cos y_j, sin y_j) of the earlier outputs:
those features are continuous on the circle, so the conditional parameters, and hence the
density, are periodic in every coordinate. The Jacobian is triangular:
ldj = Σ_d log g'(θ_d; ·). Densities are w.r.t. Lebesgue measure on [0, 2π)ᴰ.

``forward`` is this map (sequential over d, closed form for every family); ``inverse`` is
parallel over d (all conditioners read the known y) and inverts each circle map (bisection for
the mixtures). Layers are stacked with coordinate permutations in between.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.flows.bijector import Bijector
from common.flows.circle import CircleMap
from common.flows.manifolds import check_angles
from common.flows.nets import MLP

__all__ = ["AutoregressiveTorusFlow", "circle_features"]


def circle_features(theta: Tensor) -> Tensor:
    """``(B, d)`` angles → ``(B, 2d)`` features [cos θ, sin θ]: periodic and continuous."""
    return torch.cat([torch.cos(theta), torch.sin(theta)], dim=-1)


class AutoregressiveTorusFlow(Bijector):
    """One autoregressive layer on Tᴰ whose conditionals are ``circle_map`` flows.

    The conditioner of coordinate d ≥ 2 is an MLP (``num_hidden`` layers of ``hidden_features``
    units) on the features of y_{<d}; its last layer starts with small weights and the map's
    near-identity parameters as bias. Shapes: ``(B, D) → (B, D)``, angles in [0, 2π).
    """

    def __init__(
        self,
        dim: int,
        circle_map: CircleMap,
        hidden_features: int = 64,
        num_hidden: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.map = circle_map
        g = generator  # None: the global RNG (seeded by the run)
        self.first = nn.Parameter(circle_map.initial_params(g))  # (P,): p_1
        self.conditioners = nn.ModuleList()
        for d in range(1, dim):
            net = MLP(2 * d, circle_map.num_params, hidden_features, num_hidden, activation="relu")
            self.conditioners.append(net.init_output(0.01, circle_map.initial_params(g)))

    def _params(self, y: Tensor, d: int) -> Tensor:
        """Circle-map parameters ``(B, P)`` of coordinate d given the outputs ``y[:, :d]``."""
        if d == 0:
            return self.first.expand(y.shape[0], -1)
        return self.conditioners[d - 1](circle_features(y[:, :d]))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_angles(x)
        ys, ldj = [], x.new_zeros(x.shape[0])
        for d in range(self.dim):
            y_d, log_deriv = self.map(x[:, d], self._params(torch.stack(ys, -1) if ys else x, d))
            ys.append(y_d)
            ldj = ldj + log_deriv
        return torch.stack(ys, dim=-1), ldj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_angles(z)
        xs, ldj = [], z.new_zeros(z.shape[0])
        for d in range(self.dim):
            x_d, log_deriv = self.map.inverse(z[:, d], self._params(z, d))
            xs.append(x_d)
            ldj = ldj + log_deriv
        return torch.stack(xs, dim=-1), ldj

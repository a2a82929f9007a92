"""Invertible residual blocks: i-ResNet (Behrmann et al. 2019, arXiv:1811.00995) and the
unbiased log-determinant of Residual Flows (Chen et al. 2019, arXiv:1906.02735).

A block maps x ↦ z = x + g(x). If Lip(g) < 1 it is invertible (Banach: the fixed point of
x ← z − g(x) is unique and the iteration converges geometrically), and

    log |det(I + J_g(x))| = Σ_{k≥1} (−1)^{k+1} tr(J_g^k) / k        (i-ResNet, Eq. (4)),

since the eigenvalues of J_g lie in the unit disc. Three ways to compute it (``logdet``):

- ``"exact"``: the dense Jacobian from D vector-Jacobian products and ``slogdet`` (small D: the
  tests, and ``check_bijector``'s exact mode);
- ``"series"``: i-ResNet's estimate, the series truncated after ``n_terms`` terms, each trace by
  Hutchinson's estimator vᵀJ^k v (``n_probes`` probes, Gaussian or Rademacher): **biased**, the
  truncation drops terms of size O(Lip^{n+1}/(n+1)); its gradient by the Neumann form below,
  truncated alike: in expectation the derivative of the truncated series, as i-ResNet trains
  it, with one graph instead of n;
- ``"unbiased"``: Residual Flows' Russian-roulette estimator: N ~ Geometric(p) terms beyond
  ``n_exact_terms``, each term divided by P(N ≥ k), so that the expectation is the whole series;
  its gradient by the Neumann series (Residual Flows, Eq. (8)):
  ∂/∂θ log det(I + J) = E[(Σ_{k=0}^{n} (−1)^k vᵀ J^k / P(N ≥ k)) (∂J/∂θ) v], which needs no
  graph through the k matrix powers.

Lip(g) < 1 is enforced by spectral normalisation of every linear map in g
(:class:`SpectralNormLinear`, :class:`SpectralNormConv2d`: the operator norm estimated by power
iteration, the weight scaled by c/σ̂ only where σ̂ > c) and 1-Lipschitz activations
(ELU, :class:`LipSwish`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.flows.bijector import Bijector
from common.flows.logdet import logabsdet

__all__ = [
    "LipSwish",
    "ResidualBlock",
    "SpectralNormConv2d",
    "SpectralNormLinear",
    "converge_spectral_norms",
    "lipschitz_constant",
    "lipschitz_conv_net",
    "lipschitz_mlp",
]

LogDet = Literal["exact", "series", "unbiased"]


def _normalize(t: Tensor) -> Tensor:
    return t / t.norm().clamp_min(1e-12)


class _SpectralNorm(nn.Module):
    """Shared power iteration: ``u`` and ``v`` (buffers) are the estimated top left and right
    singular vectors of the layer's operator A; σ̂ = uᵀ A v (differentiable in the weight).
    Each training-mode call first runs ``n_power_iterations`` steps (in place, without a
    graph); eval mode uses the stored vectors, so evaluation does not change the state."""

    coeff: float
    n_power_iterations: int

    def _op(self, v: Tensor, weight: Tensor) -> Tensor:  # A v
        raise NotImplementedError

    def _op_t(self, u: Tensor, weight: Tensor) -> Tensor:  # Aᵀ u
        raise NotImplementedError

    @torch.no_grad()
    def power_iteration(self, steps: int) -> None:
        for _ in range(steps):
            self.v.copy_(_normalize(self._op_t(self.u, self.weight)))
            self.u.copy_(_normalize(self._op(self.v, self.weight)))

    def sigma(self) -> Tensor:
        """σ̂ = uᵀ A v, the estimated spectral norm of the operator."""
        return (self.u * self._op(self.v, self.weight)).sum()

    def normalized_weight(self) -> Tensor:
        """W · min(1, c/σ̂): scaled only where σ̂ exceeds the coefficient c."""
        if self.training and self.n_power_iterations:
            self.power_iteration(self.n_power_iterations)
        return self.weight * (self.coeff / self.sigma()).clamp(max=1.0)


class SpectralNormLinear(_SpectralNorm):
    """y = W̃ x + b with ‖W̃‖₂ ≤ c (up to the power iteration's accuracy). Shapes
    ``(B, in) → (B, out)``."""

    def __init__(self, in_features: int, out_features: int, coeff: float = 0.9,
                 n_power_iterations: int = 1, seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.coeff, self.n_power_iterations = coeff, n_power_iterations
        linear = nn.Linear(in_features, out_features)
        self.weight, self.bias = linear.weight, linear.bias
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("u", _normalize(torch.randn(out_features, generator=g)))
        self.register_buffer("v", _normalize(torch.randn(in_features, generator=g)))
        self.power_iteration(100)  # a converged estimate from the start

    def _op(self, v: Tensor, weight: Tensor) -> Tensor:
        return weight @ v

    def _op_t(self, u: Tensor, weight: Tensor) -> Tensor:
        return weight.T @ u

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


class SpectralNormConv2d(_SpectralNorm):
    """A stride-1 "same" 2-D convolution whose **operator** on feature maps of
    ``input_shape`` = (C, H, W) has spectral norm ≤ c: the power iteration runs on the
    convolution itself (u, v are feature maps), not on the reshaped kernel, whose norm is
    not the operator's (i-ResNet, Sec. 3; Gouk et al. 2018). Shapes ``(B, C, H, W) →
    (B, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 input_shape: tuple[int, int, int], coeff: float = 0.9,
                 n_power_iterations: int = 1, seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("a 'same' convolution needs an odd kernel size")
        if input_shape[0] != in_channels:
            raise ValueError(f"input_shape {input_shape} does not have {in_channels} channels")
        self.coeff, self.n_power_iterations = coeff, n_power_iterations
        self.padding = kernel_size // 2
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=self.padding)
        self.weight, self.bias = conv.weight, conv.bias
        _, H, W = input_shape
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("u", _normalize(torch.randn(1, out_channels, H, W, generator=g)))
        self.register_buffer("v", _normalize(torch.randn(1, in_channels, H, W, generator=g)))
        self.power_iteration(100)

    def _op(self, v: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(v, weight, padding=self.padding)

    def _op_t(self, u: Tensor, weight: Tensor) -> Tensor:
        return F.conv_transpose2d(u, weight, padding=self.padding)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, padding=self.padding)


def converge_spectral_norms(module: nn.Module, steps: int = 100) -> None:
    """Run ``steps`` power iterations in every spectrally normalised layer of ``module`` (after
    loading or perturbing weights, before trusting σ̂)."""
    for m in module.modules():
        if isinstance(m, _SpectralNorm):
            m.power_iteration(steps)


class LipSwish(nn.Module):
    """x · σ(βx) / 1.1 with β = softplus(b) > 0 learned: 1-Lipschitz (the swish's slope is at
    most 1.1 for every β; Residual Flows, Sec. 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw_beta = nn.Parameter(torch.tensor(0.5413))  # softplus(0.5413) = 1

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(F.softplus(self.raw_beta) * x) / 1.1


def _activation(name: str) -> nn.Module:
    if name not in ("lipswish", "elu"):
        raise ValueError(f"activation must be 'lipswish' or 'elu' (1-Lipschitz), got {name!r}")
    return LipSwish() if name == "lipswish" else nn.ELU()


def lipschitz_mlp(features: int, hidden_features: int, num_hidden: int, coeff: float = 0.9,
                  n_power_iterations: int = 1, activation: str = "lipswish",
                  seed: int = 0) -> nn.Sequential:  # fmt: skip
    """g of a vector block: ``features → [hidden_features] × num_hidden → features``, every
    linear map spectrally normalised to c and 1-Lipschitz activations between them, so
    Lip(g) ≤ c^(num_hidden+1) < 1 (i-ResNet's toy and tabular g). ``seed`` seeds the power
    iteration's start vectors. Shapes ``(B, features) → (B, features)``."""
    widths = [features] + [hidden_features] * num_hidden + [features]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if i:
            layers.append(_activation(activation))
        layers.append(
            SpectralNormLinear(n_in, n_out, coeff, n_power_iterations, seed=seed * 100 + i)
        )
    return nn.Sequential(*layers)


def lipschitz_conv_net(shape: tuple[int, int, int], hidden_channels: int, coeff: float = 0.9,
                       n_power_iterations: int = 1, activation: str = "elu",
                       input_activation: bool = True, seed: int = 0) -> nn.Sequential:  # fmt: skip
    """g of an image block, i-ResNet's bottleneck: [activation →] conv 3×3 (C → hidden) →
    activation → conv 1×1 (hidden → hidden) → activation → conv 3×3 (hidden → C), each
    convolution's operator on maps of ``shape`` = (C, H, W) normalised to c (i-ResNet, Sec. 5;
    the authors' ``conv_iresnet_block``, whose first block of the flow has no input
    activation). Shapes ``(B, C, H, W) → (B, C, H, W)``."""
    C, H, W = shape
    hidden = hidden_channels
    convs = [(C, hidden, 3), (hidden, hidden, 1), (hidden, C, 3)]  # (in, out, kernel)
    layers: list[nn.Module] = [_activation(activation)] if input_activation else []
    for i, (n_in, n_out, k) in enumerate(convs):
        if i:
            layers.append(_activation(activation))
        layers.append(SpectralNormConv2d(n_in, n_out, k, (n_in, H, W), coeff, n_power_iterations,
                                         seed=seed * 100 + i))  # fmt: skip
    return nn.Sequential(*layers)


def lipschitz_constant(g: nn.Module, x: Tensor, steps: int = 200) -> float:
    """The largest ‖J_g(xᵢ)‖₂ over the examples of ``x``: power iteration on JᵀJ with
    Jacobian-vector products, at each point (a lower bound on Lip(g), tight where the maximum
    slope is attained; used by the tests to check that spectral normalisation holds)."""
    x = x.detach()
    v = _normalize(torch.randn_like(x))
    best = 0.0
    for i in range(len(x)):
        xi, vi = x[i : i + 1], v[i : i + 1]
        for _ in range(steps):
            _, jv = torch.func.jvp(g, (xi,), (vi,))
            _, vjp = torch.func.vjp(g, xi)
            vi = _normalize(vjp(jv)[0])
        _, jv = torch.func.jvp(g, (xi,), (vi,))
        best = max(best, jv.norm().item())
    return best


class ResidualBlock(Bijector):
    """z = x + g(x), Lip(g) < 1 (module docstring). ``g`` maps ``(B, ...)`` to the same shape.

    ``forward`` (data → latent) is closed form with an ldj by ``logdet``; ``inverse`` iterates
    x ← z − g(x) from x = z until max |Δx| < ``tol`` (or ``max_iter``; the count is kept in
    ``last_inverse_iterations``) and attaches the exact gradient of the fixed point
    (∂x/∂· = (I + J_g)⁻¹ ∂(z − g)/∂·, by a backward hook solving the transposed system with the
    same iteration), so the inverse is differentiable like a closed-form one.

    ``ldj_is_estimate`` holds for ``series`` and ``unbiased``; inside
    :func:`~common.flows.bijector.exact_ldj` the ldj is exact.
    """

    def __init__(
        self,
        g: nn.Module,
        logdet: LogDet = "series",
        n_terms: int = 5,
        n_probes: int = 1,
        noise: Literal["gaussian", "rademacher"] = "gaussian",
        n_exact_terms: int = 2,
        geom_p: float = 0.5,
        tol: float = 1e-6,
        max_iter: int = 500,
    ) -> None:
        super().__init__()
        if logdet not in ("exact", "series", "unbiased"):
            raise ValueError(f"logdet must be 'exact', 'series' or 'unbiased', got {logdet!r}")
        if noise not in ("gaussian", "rademacher"):
            raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")
        self.g, self.logdet = g, logdet
        self.n_terms, self.n_probes, self.noise = n_terms, n_probes, noise
        self.n_exact_terms, self.geom_p = n_exact_terms, geom_p
        self.tol, self.max_iter = tol, max_iter
        self.ldj_is_estimate = logdet != "exact"
        self.ldj_costly = True  # sampling skips the log-det (values_only)
        self.last_inverse_iterations = 0

    # --- log-determinants -----------------------------------------------------------------

    def _probe(self, like: Tensor) -> Tensor:
        v = torch.randn_like(like)
        return v.sign() if self.noise == "rademacher" else v

    @staticmethod
    def _vjp(gx: Tensor, x: Tensor, w: Tensor, create_graph: bool) -> Tensor:
        return torch.autograd.grad(gx, x, w, create_graph=create_graph, retain_graph=True)[0]

    def _exact(self, gx: Tensor, x: Tensor) -> Tensor:
        """log |det(I + J)| from the dense Jacobian: D vector-Jacobian products."""
        B, D = x.shape[0], x[0].numel()
        rows = []
        for i in range(D):
            e = torch.zeros(B, D, dtype=x.dtype, device=x.device)
            e[:, i] = 1
            rows.append(self._vjp(gx, x, e.view_as(gx), create_graph=True).reshape(B, D))
        J = torch.stack(rows, dim=1)  # (B, D, D): row i = ∂g_i/∂x
        return logabsdet(torch.eye(D, dtype=x.dtype, device=x.device) + J)

    def _series(self, gx: Tensor, x: Tensor) -> Tensor:
        """i-ResNet: Σ_{k=1}^{n} (−1)^{k+1} vᵀJ^k v / k, averaged over the probes."""
        return self._power_series(gx, x, self.n_terms, lambda k: 1.0)

    def _unbiased(self, gx: Tensor, x: Tensor) -> Tensor:
        """Residual Flows: Russian roulette over the series (N ~ n_exact_terms + Geometric)."""
        n = self.n_exact_terms + int(torch.distributions.Geometric(self.geom_p).sample())

        def survive(k: int) -> float:  # P(N ≥ k): the first n_exact_terms terms always run
            return 1.0 if k <= self.n_exact_terms else (1 - self.geom_p) ** (k - self.n_exact_terms)

        return self._power_series(gx, x, n, survive)

    def _power_series(self, gx: Tensor, x: Tensor, n: int, survive) -> Tensor:
        """Σ_{k=1}^{n} (−1)^{k+1} vᵀJ^k v / (k · P(N ≥ k)), the VJPs taken without a graph;
        its gradient (w.r.t. the parameters and x) by the Neumann-series surrogate
        (Σ_{k=0}^{n−1} (−1)^k vᵀJ^k / P(N ≥ k + 1)) (∂J) v, which has the expectation of the
        estimate's own derivative: by the cyclic trace, ∂ tr(J^k)/k = tr(J^{k−1} ∂J). One VJP
        with a graph instead of n (Residual Flows, Sec. 3.2)."""
        value = x.new_zeros(x.shape[0])
        surrogate = x.new_zeros(x.shape[0])
        for _ in range(self.n_probes):
            v = self._probe(gx)
            w, neumann = v, v.clone()
            with torch.no_grad():
                for k in range(1, n + 1):
                    w = self._vjp(gx, x, w, create_graph=False)  # vᵀ J^k
                    value += (-1) ** (k + 1) / (k * survive(k)) * (w * v).flatten(1).sum(1)
                    if k < n:  # Σ_{k=0}^{n-1} (−1)^k vᵀ J^k / P(N ≥ k + 1)
                        neumann = neumann + (-1) ** k / survive(k + 1) * w
            if torch.is_grad_enabled() and self.training:
                jv = self._vjp(gx, x, neumann.detach(), create_graph=True)  # (Σ …)ᵀ J
                surrogate = surrogate + (jv * v).flatten(1).sum(1)
        value, surrogate = value / self.n_probes, surrogate / self.n_probes
        return value + surrogate - surrogate.detach()

    def _ldj(self, gx: Tensor, x: Tensor) -> Tensor:
        if self.exact_ldj or self.logdet == "exact":
            return self._exact(gx, x)
        return self._series(gx, x) if self.logdet == "series" else self._unbiased(gx, x)

    # --- the bijection ----------------------------------------------------------------------

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():  # the ldj needs J_g, evaluation included
            x_ = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self.g(x_)
            ldj = self._ldj(gx, x_)
        z = x_ + gx
        if not torch.is_grad_enabled():
            z, ldj = z.detach(), ldj.detach()
        return z, ldj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            x, self.last_inverse_iterations = z.clone(), 0
            while self.last_inverse_iterations < self.max_iter:
                x_next = z - self.g(x)
                delta = (x_next - x).abs().max().item()
                x = x_next
                self.last_inverse_iterations += 1
                if delta < self.tol:
                    break
        x_star = x.detach()
        if torch.is_grad_enabled() and (z.requires_grad or any(
                p.requires_grad for p in self.parameters())):  # fmt: skip
            # x = x* − A⁻¹ r with r = x* + g(x*) − z (0 at the solution) and A = I + J_g(x*):
            # the value stays x*, the derivative is the fixed point's, −A⁻¹ ∂r
            with torch.enable_grad():
                x_leaf = x_star.clone().requires_grad_(True)
                g_leaf = self.g(x_leaf)

                def vjp(a: Tensor) -> Tensor:
                    return self._vjp(g_leaf, x_leaf, a, create_graph=False)

                r = x_star + self.g(x_star) - z
                x_out = x_star - _ImplicitSolve.apply(r, vjp, self.max_iter, self.tol)
        else:
            x_out = x_star
        if self.ldj_unused:  # values only (sampling): no series
            return x_out, x_out.new_zeros(x_out.shape[0])
        with torch.enable_grad():
            x_ = x_out if x_out.requires_grad else x_out.detach().requires_grad_(True)
            ldj = self._ldj(self.g(x_), x_)
        if not torch.is_grad_enabled():
            ldj = ldj.detach()
        return x_out, -ldj


class _ImplicitSolve(torch.autograd.Function):
    """s = A⁻¹ r for A = I + J (J ⁠= ∂g/∂x at the fixed point, ‖J‖ < 1), applied where r ≈ 0:
    the forward returns r (= A⁻¹ r to first order in the solver's tolerance), the backward the
    exact A⁻ᵀ grad by the iteration a ← grad − Jᵀ a."""

    @staticmethod
    def forward(ctx, r: Tensor, vjp, max_iter: int, tol: float) -> Tensor:
        ctx.vjp, ctx.max_iter, ctx.tol = vjp, max_iter, tol
        return r.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        a = grad
        for _ in range(ctx.max_iter):
            a_next = grad - ctx.vjp(a)
            converged = (a_next - a).abs().max().item() < ctx.tol * 1e-3
            a = a_next
            if converged:
                break
        return a, None, None, None

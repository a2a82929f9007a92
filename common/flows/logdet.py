"""Log-determinant utilities: exact helpers, triangular and LU parametrisations, the
Hutchinson trace estimator, and a brute-force autograd Jacobian log-det used by tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from common.flows.bijector import Bijector

__all__ = [
    "LULinear",
    "LUParametrization",
    "hutchinson_trace",
    "jacobian_logabsdet",
    "logabsdet",
    "triangular_logabsdet",
]


def logabsdet(matrix: Tensor) -> Tensor:
    """log |det A| for ``(..., D, D)`` matrices, via LU (``torch.linalg.slogdet``)."""
    return torch.linalg.slogdet(matrix).logabsdet


def triangular_logabsdet(matrix: Tensor) -> Tensor:
    """log |det T| = Σ_i log |T_ii| for a triangular ``(..., D, D)`` matrix: O(D), not O(D³)."""
    return torch.diagonal(matrix, dim1=-2, dim2=-1).abs().log().sum(-1)


class LUParametrization(nn.Module):
    """W = P · L · (U + diag(sign · exp(log_s))) with P a fixed permutation, L unit lower
    triangular and U strictly upper triangular (Kingma & Dhariwal 2018, Glow, Sec. 3.2):
    log |det W| = Σ log_s costs O(D) instead of O(D³).

    Initialised from ``weight`` (default: a random rotation from a seeded QR decomposition).
    """

    def __init__(self, num_features: int, weight: Tensor | None = None, seed: int = 0) -> None:
        super().__init__()
        if weight is None:
            g = torch.Generator().manual_seed(seed)
            weight = torch.linalg.qr(torch.randn(num_features, num_features, generator=g))[0]
        P, L, U = torch.linalg.lu(weight)
        diag = torch.diagonal(U)
        self.register_buffer("P", P)
        self.register_buffer("sign_s", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones_like(L), -1))
        self.lower = nn.Parameter(L * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(U, 1))
        self.log_s = nn.Parameter(diag.abs().log())

    def factors(self) -> tuple[Tensor, Tensor]:
        """The unit lower factor L and the upper factor U (diagonal included)."""
        eye = torch.eye(len(self.log_s), device=self.log_s.device, dtype=self.log_s.dtype)
        L = self.lower * self.lower_mask + eye
        U = torch.triu(self.upper, 1) + torch.diag(self.sign_s * self.log_s.exp())
        return L, U

    def weight(self) -> Tensor:
        L, U = self.factors()
        return self.P @ L @ U

    def logabsdet(self) -> Tensor:
        return self.log_s.sum()


class LULinear(Bijector):
    """z = W x + b with W LU-parametrised; ldj = Σ log_s for every example.
    Inverse by two triangular solves. Shapes ``(B, D) → (B, D)``."""

    def __init__(self, num_features: int, seed: int = 0) -> None:
        super().__init__()
        self.lu = LUParametrization(num_features, seed=seed)
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = x @ self.lu.weight().T + self.bias
        return z, self.lu.logabsdet().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        L, U = self.lu.factors()
        rhs = self.lu.P.T @ (z - self.bias).T  # (D, B): solve P L U x = z - b
        y = torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(U, y, upper=True).T
        return x, -self.lu.logabsdet().expand(z.shape[0])


def hutchinson_trace(
    output: Tensor,
    inputs: Tensor,
    noise: str = "rademacher",
    num_probes: int = 1,
    create_graph: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unbiased estimate of tr(∂f/∂x) per example: E_ε[εᵀ (∂f/∂x) ε] with E[εεᵀ] = I
    (Hutchinson 1989; used by FFJORD, Grathwohl et al. 2019, Eq. (7), and i-ResNet).

    ``output`` = f(``inputs``), both ``(B, D)`` (or ``(B, ...)`` of equal shape), computed with
    ``inputs.requires_grad``. ``noise``: ``"gaussian"`` or ``"rademacher"`` (±1; lower variance,
    exact for diagonal Jacobians). Returns ``(B,)``, averaged over ``num_probes``.
    """
    if noise not in ("gaussian", "rademacher"):
        raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")
    estimates = []
    for k in range(num_probes):
        eps = torch.randn(output.shape, generator=generator, dtype=output.dtype).to(output.device)
        if noise == "rademacher":
            eps = eps.sign()
        retain = create_graph or k < num_probes - 1
        (vjp,) = torch.autograd.grad(
            output, inputs, eps, create_graph=create_graph, retain_graph=retain
        )
        estimates.append((vjp * eps).reshape(output.shape[0], -1).sum(1))
    return torch.stack(estimates).mean(0)


def jacobian_logabsdet(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Brute-force log |det ∂fn/∂x| per example, from the full autograd Jacobian.

    ``fn`` maps a ``(1, ...)`` batch to a ``(1, ...)`` batch with as many elements; ``x`` is
    ``(B, ...)``. O(B·D³): for tests on small inputs only. Returns ``(B,)``.
    """
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.unsqueeze(0)).flatten(), xi)
        out.append(logabsdet(jac.reshape(jac.shape[0], -1)))
    return torch.stack(out)

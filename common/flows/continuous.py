"""Continuous normalizing flows (Chen et al. 2018, "Neural ODEs", arXiv:1806.07366) with
FFJORD's free-form dynamics and stochastic trace (Grathwohl et al. 2019, arXiv:1810.01367),
solved by torchdiffeq.

The map x ↦ z is the solution at time T of dz/dt = f(t, z), z(0) = x. The instantaneous change
of variables (Neural ODEs, Thm. 1) gives

    d/dt log |det ∂z(t)/∂x| = tr(∂f/∂z(t)),      so      ldj = ∫₀ᵀ tr(∂f/∂z(t)) dt,

integrated beside z as a second state. The trace is computed (``divergence``)

- ``"exact"``: Σᵢ ∂fᵢ/∂zᵢ from D vector-Jacobian products (small D);
- ``"hutchinson"``: εᵀ(∂f/∂z)ε with one ε (Gaussian or Rademacher) drawn per solve and kept
  fixed through it (FFJORD, Sec. 3.1): an unbiased estimate of the log-det, from one VJP.

The integration time T is trainable (FFJORD's ``train_T``): the solver runs over s ∈ [0, 1]
with the dynamics T·f(sT, z), so T is an ordinary parameter of the dynamics, for backprop
through the solver and for the adjoint method (``adjoint=True``: ``odeint_adjoint``, memory
independent of the number of steps) alike. The number of function evaluations (NFE) of the
last forward solve and of the backward pass are counted.

Dynamics networks (:class:`ODENet`): stacks of FFJORD's layer types, ``concat`` (t appended
to the input), ``concatsquash`` ((Wx + b)·σ(W_g t + b_g) + W_b t) and ``ignore`` (t unused),
with tanh or softplus between layers.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.flows.bijector import Bijector

__all__ = ["CNF", "ODENet"]

LayerType = Literal["concat", "concatsquash", "ignore"]


class _ConcatLinear(nn.Module):
    """y = W [x, t] + b."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in + 1, n_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.linear(torch.cat([x, t.expand(x.shape[0], 1)], dim=1))


class _ConcatSquashLinear(nn.Module):
    """y = (W x + b) · σ(W_g t + b_g) + W_b t (FFJORD's ``concatsquash``)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.gate = nn.Linear(1, n_out)
        self.hyper_bias = nn.Linear(1, n_out, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        t = t.reshape(1, 1)
        return self.linear(x) * torch.sigmoid(self.gate(t)) + self.hyper_bias(t)


class _IgnoreLinear(nn.Module):
    """y = W x + b (t unused)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.linear(x)


_LAYERS = {"concat": _ConcatLinear, "concatsquash": _ConcatSquashLinear, "ignore": _IgnoreLinear}
_ACTIVATIONS = {"tanh": torch.tanh, "softplus": F.softplus}


class ODENet(nn.Module):
    """f(t, z): ``features → hidden[0] → … → features``, every layer of ``layer_type``,
    ``activation`` between layers. Shapes ``t: ()``, ``z: (B, features) → (B, features)``."""

    def __init__(
        self,
        features: int,
        hidden: list[int],
        layer_type: LayerType = "concatsquash",
        activation: Literal["tanh", "softplus"] = "tanh",
    ) -> None:
        super().__init__()
        if layer_type not in _LAYERS:
            raise ValueError(f"layer_type must be one of {sorted(_LAYERS)}, got {layer_type!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        widths = [features, *hidden, features]
        self.layers = nn.ModuleList(
            _LAYERS[layer_type](a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.activation = _ACTIVATIONS[activation]

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            if i:
                z = self.activation(z)
            z = layer(t, z)
        return z


class _Dynamics(nn.Module):
    """The augmented ODE over s ∈ [0, 1]: d(z, l)/ds = T·(f(sT, z), tr ∂f/∂z), counting its
    evaluations. ``eps`` is the probe of the current solve, for the Hutchinson trace
    (``hutchinson``) and the Jacobian-Frobenius regulariser; ``trace`` off integrates z alone
    (values only)."""

    def __init__(self, net: nn.Module, T: float, train_T: bool) -> None:
        super().__init__()
        self.net = net
        # T = sqrt_T² > 0, FFJORD's parametrisation of a trainable end time
        self.sqrt_T = nn.Parameter(torch.tensor(float(T) ** 0.5), requires_grad=train_T)
        self.eps: Tensor | None = None  # the probe of the current solve
        self.hutchinson = False  # the trace by the probe (else exact)
        self.trace = True  # False: values only, the state is z alone
        self.evaluations = 0

    @property
    def end_time(self) -> Tensor:
        return self.sqrt_T**2

    def forward(self, s: Tensor, state: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        """d/ds of (z, ldj[, kinetic energy, Jacobian Frobenius norm]): the regularisers'
        integrands ‖f‖² and ‖εᵀ ∂f/∂z‖² (Finlay et al. 2020) are integrated when the state
        carries them (a probe ε is then drawn for the solve even with the exact trace)."""
        self.evaluations += 1
        if not self.trace:  # values only: the state is z alone
            T = self.end_time
            return T * self.net(s * T, state)
        z = state[0]
        regularised = len(state) == 4
        create = torch.is_grad_enabled()  # a graph through the trace only when one is wanted
        with torch.enable_grad():  # the trace needs ∂f/∂z, evaluation included
            T = self.end_time
            # a fresh leaf unless the caller differentiates through z (under no_grad, e.g. in
            # the adjoint's forward solve, z may require grad yet carry no graph)
            z_ = z if create and z.requires_grad else z.detach().requires_grad_(True)
            dz = self.net(s * T, z_)
            vjp = None
            if self.eps is not None and (self.hutchinson or regularised):
                vjp = torch.autograd.grad(dz, z_, self.eps, create_graph=create)[0]
            if self.hutchinson:
                div = (vjp * self.eps).sum(1)
            else:
                div = _exact_divergence(dz, z_, create_graph=create)
        out = [T * dz, T * div]
        if regularised:  # dt = T ds
            out += [T * dz.pow(2).sum(1), T * vjp.pow(2).sum(1)]
        return tuple(o if create else o.detach() for o in out)


def _exact_divergence(dz: Tensor, z: Tensor, create_graph: bool) -> Tensor:
    """Σᵢ ∂fᵢ/∂zᵢ from D vector-Jacobian products (one per coordinate). Batching them into
    one pass (``is_grads_batched``, vmap) was measured slower on CPU (2-D and D = 16, 3 × 64
    concatsquash, batch 256: 7–12 % per training step), so they run in turn."""
    div = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for i in range(z.shape[1]):
        e = torch.zeros_like(dz)
        e[:, i] = 1
        vjp = torch.autograd.grad(dz, z, e, create_graph=create_graph, retain_graph=True)[0]
        div = div + vjp[:, i]
    return div


class CNF(Bijector):
    """A continuous normalizing flow block on ``(B, D)`` (module docstring): ``forward``
    integrates data → latent over s from 0 to 1, ``inverse`` from 1 to 0; each returns the
    integrated trace as its ldj.

    ``solver``: ``"dopri5"`` (adaptive, ``atol``/``rtol``; ``first_step`` in s, else chosen by
    torchdiffeq from the derivatives, which starts small) or ``"rk4"`` (fixed steps of
    ``step_size`` in s). ``divergence="hutchinson"`` makes the ldj an estimate
    (``ldj_is_estimate``); inside :func:`~common.flows.bijector.exact_ldj` the trace is exact.
    ``last_nfe`` is the number of dynamics evaluations of the last solve;
    ``evaluations`` counts every evaluation (forward and adjoint backward) since creation.
    """

    def __init__(
        self,
        net: nn.Module,
        T: float = 1.0,
        train_T: bool = True,
        divergence: Literal["exact", "hutchinson"] = "exact",
        noise: Literal["gaussian", "rademacher"] = "gaussian",
        solver: Literal["dopri5", "rk4"] = "dopri5",
        atol: float = 1e-5,
        rtol: float = 1e-5,
        step_size: float = 0.1,
        adjoint: bool = False,
        kinetic_energy: float = 0.0,
        jacobian_frobenius: float = 0.0,
        first_step: float | None = None,
    ) -> None:
        super().__init__()
        if divergence not in ("exact", "hutchinson"):
            raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
        if noise not in ("gaussian", "rademacher"):
            raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")
        if solver not in ("dopri5", "rk4"):
            raise ValueError(f"solver must be 'dopri5' or 'rk4', got {solver!r}")
        self.dynamics = _Dynamics(net, T, train_T)
        self.divergence, self.noise = divergence, noise
        self.solver, self.atol, self.rtol, self.step_size = solver, atol, rtol, step_size
        self.adjoint, self.first_step = adjoint, first_step
        self.kinetic_energy, self.jacobian_frobenius = kinetic_energy, jacobian_frobenius
        self.ldj_is_estimate = divergence == "hutchinson"
        self.ldj_costly = True  # sampling skips the trace (values_only)
        self.last_nfe = 0
        self.last_regularisers: tuple[Tensor, Tensor] | None = None

    @property
    def evaluations(self) -> int:
        return self.dynamics.evaluations

    def _solve(self, x: Tensor, s0: float, s1: float) -> tuple[Tensor, Tensor]:
        from torchdiffeq import odeint, odeint_adjoint

        dynamics = self.dynamics
        weighted = bool(self.kinetic_energy or self.jacobian_frobenius)
        regularised = weighted and self.training and not self.ldj_unused
        dynamics.trace = not self.ldj_unused
        dynamics.hutchinson = self.divergence == "hutchinson" and not self.exact_ldj
        dynamics.eps = None
        if dynamics.hutchinson or regularised:
            eps = torch.randn_like(x)
            dynamics.eps = eps.sign() if self.noise == "rademacher" else eps
        s = torch.tensor([s0, s1], dtype=x.dtype, device=x.device)
        zero = x.new_zeros(x.shape[0])
        state = (x, zero, zero, zero) if regularised else (x, zero)
        if not dynamics.trace:
            state = x  # one tensor: no ldj state, and torchdiffeq need not pack a tuple
        if self.solver == "rk4":
            options = {"step_size": self.step_size}
        else:  # dopri5 picks its first step from the derivatives unless told
            options = None if self.first_step is None else {"first_step": self.first_step}
        kwargs = dict(rtol=self.rtol, atol=self.atol, method=self.solver, options=options)
        before = dynamics.evaluations
        if self.adjoint:
            params = tuple(p for p in dynamics.parameters() if p.requires_grad)
            out = odeint_adjoint(dynamics, state, s, adjoint_params=params, **kwargs)
        else:
            out = odeint(dynamics, state, s, **kwargs)
        self.last_nfe = dynamics.evaluations - before
        if not dynamics.trace:
            return out[-1], zero
        self.last_regularisers = (out[2][-1], out[3][-1]) if regularised else None
        return out[0][-1], out[1][-1]

    def penalty(self) -> Tensor:
        """λ_K · mean ∫‖f‖² dt + λ_J · mean ∫‖∂f/∂z‖²_F dt of the last training solve
        (Finlay et al. 2020, "How to train your neural ODE"; the Frobenius norm by the
        solve's probe), which the trainer adds to the loss; 0 without regularisers."""
        if self.last_regularisers is None:
            return self.dynamics.sqrt_T.new_zeros(())
        kinetic, frobenius = self.last_regularisers
        return self.kinetic_energy * kinetic.mean() + self.jacobian_frobenius * frobenius.mean()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(x, 0.0, 1.0)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(z, 1.0, 0.0)

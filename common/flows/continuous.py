"""Continuous normalizing flows (Chen et al. 2018, "Neural ODEs", arXiv:1806.07366) with
FFJORD's free-form dynamics and stochastic trace (Grathwohl et al. 2019, arXiv:1810.01367),
solved by torchdiffeq.

The map x ↦ z is the solution at time T of dz/dt = f(t, z), z(0) = x. The instantaneous change
of variables (Neural ODEs, Thm. 1) gives

    d/dt log |det ∂z(t)/∂x| = tr(∂f/∂z(t)),      so      ldj = ∫₀ᵀ tr(∂f/∂z(t)) dt,

integrated beside z as a second state. The trace is computed (``divergence``)

- ``"exact"``: Σᵢ ∂fᵢ/∂zᵢ, from the D columns of ∂f/∂z (small D);
- ``"hutchinson"``: εᵀ(∂f/∂z)ε with one ε (Gaussian or Rademacher) drawn per solve and kept
  fixed through it (FFJORD, Sec. 3.1): an unbiased estimate of the log-det, from one product.

With :class:`ODENet` and :class:`ODEConvNet` the Jacobian-vector products are pushed forward
through the layers beside the values (forward-mode, by hand: each layer is affine in its
input), one pass that autograd differentiates once; FFJORD's vector-Jacobian products need a
graph of their own and a double backward (measured on FFJORD's 2-D toy model, batch 256, 20
evaluations, one thread: 51 ms per training step against 62 ms; for Hutchinson's single
product the two are on par, D = 16 and 63), and remain the path for any other network.

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

__all__ = ["CNF", "ODEConvNet", "ODENet"]

LayerType = Literal["concat", "concatsquash", "ignore"]


class _AffineInInput(nn.Module):
    """A layer affine in its input at fixed t, y = (x Wᵀ)·scale(t) + bias(t): ``parts(t)``
    gives (W, scale or None, bias); its tangents map by W and the scale alone."""

    def parts(self, t: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        raise NotImplementedError

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        weight, scale, bias = self.parts(t)
        if scale is None:
            return F.linear(x, weight, bias)
        return torch.addcmul(bias, F.linear(x, weight), scale)

    def forward_with_tangent(self, t: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        weight, scale, bias = self.parts(t)
        y, v = F.linear(x, weight), F.linear(v, weight)
        if scale is not None:
            y, v = y * scale, v * scale
        return y + bias, v


class _ConcatLinear(_AffineInInput):
    """y = W [x, t] + b."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in + 1, n_out)

    def parts(self, t: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        w = self.linear.weight  # [W_x | w_t]: the time column joins the bias
        return w[:, :-1], None, torch.addcmul(self.linear.bias, w[:, -1], t)


class _ConcatSquashLinear(_AffineInInput):
    """y = (W x + b) · σ(W_g t + b_g) + W_b t (FFJORD's ``concatsquash``)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.gate = nn.Linear(1, n_out)
        self.hyper_bias = nn.Linear(1, n_out, bias=False)

    def parts(self, t: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        t = t.reshape(1)
        scale = torch.sigmoid(self.gate(t))
        return self.linear.weight, scale, torch.addcmul(self.hyper_bias(t), self.linear.bias, scale)


class _IgnoreLinear(_AffineInInput):
    """y = W x + b (t unused)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def parts(self, t: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        return self.linear.weight, None, self.linear.bias


_LAYERS = {"concat": _ConcatLinear, "concatsquash": _ConcatSquashLinear, "ignore": _IgnoreLinear}


class _ConcatConv2d(nn.Module):
    """y = conv3×3([x, t·1]) + b, zero padding (FFJORD's ``concat`` convolution: t enters as
    an extra input channel)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in + 1, c_out, 3, padding=1)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tt = t.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])
        return self.conv(torch.cat([x, tt], 1))

    def forward_with_tangent(self, t: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The value, and the map's derivative along v ``(B or 1, K, C, H, W)``: the input
        channels' weights alone (the time channel does not move with z)."""
        dv = F.conv2d(v.flatten(0, 1), self.conv.weight[:, :-1], padding=1)
        return self(t, x), dv.unflatten(0, v.shape[:2])


def _tanh(a: Tensor) -> tuple[Tensor, Tensor]:
    y = torch.tanh(a)
    return y, 1 - y * y


def _softplus(a: Tensor) -> tuple[Tensor, Tensor]:
    return F.softplus(a), torch.sigmoid(a)


_ACTIVATIONS = {"tanh": _tanh, "softplus": _softplus}  # value and slope


class _TangentNet(nn.Module):
    """f(t, z): ``layers`` with ``activation`` between them, each layer affine in its input
    at fixed t, so Jacobian-vector products travel forward beside the values
    (:meth:`forward_with_tangents`): the CNF's trace in one pass that autograd differentiates
    once, where vector-Jacobian products would need a graph of their own and a double
    backward."""

    def __init__(self, layers: list[nn.Module], activation: str) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        self.layers = nn.ModuleList(layers)
        self.activation = _ACTIVATIONS[activation]

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            if i:
                z = self.activation(z)[0]
            z = layer(t, z)
        return z

    def forward_with_tangents(self, t: Tensor, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """f(t, z) and the products (∂f/∂z)·vₖ for K tangents (forward-mode differentiation by
        hand). Shapes ``z: (B, *event)``, ``v: (B or 1, K, *event)`` → ``(B, *event)``,
        ``(B, K, *event)``; with v = I (1, D, D) row i is the column ∂f/∂zᵢ, whose diagonal
        sums to tr ∂f/∂z."""
        for i, layer in enumerate(self.layers):
            if i:
                z, slope = self.activation(z)
                v = v * slope.unsqueeze(1)
            z, v = layer.forward_with_tangent(t, z, v)
        return z, v.expand(z.shape[0], *v.shape[1:])  # without hidden layers v is (1, K, …)


class ODENet(_TangentNet):
    """f(t, z) on vectors: ``features → hidden[0] → … → features``, every layer of
    ``layer_type``, ``activation`` between layers. Shapes ``t: ()``, ``z: (B, features) →
    (B, features)``."""

    def __init__(
        self,
        features: int,
        hidden: list[int],
        layer_type: LayerType = "concatsquash",
        activation: Literal["tanh", "softplus"] = "tanh",
    ) -> None:
        if layer_type not in _LAYERS:
            raise ValueError(f"layer_type must be one of {sorted(_LAYERS)}, got {layer_type!r}")
        widths = [features, *hidden, features]
        layers = [_LAYERS[layer_type](a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        super().__init__(layers, activation)


class ODEConvNet(_TangentNet):
    """f(t, z) on images: 3×3 ``concat`` convolutions ``channels → hidden[0] → … →
    channels`` (stride 1, the authors' image ODE net), ``activation`` between layers. Shapes
    ``t: ()``, ``z: (B, C, H, W) → (B, C, H, W)``."""

    def __init__(
        self, channels: int, hidden: list[int], activation: Literal["tanh", "softplus"] = "softplus"
    ) -> None:
        widths = [channels, *hidden, channels]
        layers = [_ConcatConv2d(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        super().__init__(layers, activation)


class _Dynamics(nn.Module):
    """The augmented ODE over s ∈ [0, 1]: d(z, l)/ds = T·(f(sT, z), tr ∂f/∂z), counting its
    evaluations. ``eps`` is the probe of the current solve, for the Hutchinson trace
    (``hutchinson``) and, for a network without forward tangents, the Jacobian-Frobenius
    regulariser; ``trace`` off integrates z alone (values only)."""

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
        integrands ‖f‖² and ‖∂f/∂z‖²_F (Finlay et al. 2020) are integrated when the state
        carries them; the Frobenius norm is exact with the exact trace, ‖(∂f/∂z)ε‖² by the
        solve's probe with Hutchinson's."""
        self.evaluations += 1
        T = self.end_time
        if not self.trace:  # values only: the state is z alone
            return T * self.net(s * T, state)
        z = state[0]
        regularised = len(state) == 4
        if hasattr(self.net, "forward_with_tangents"):
            dz, div, frobenius = self._forward_mode(s * T, z, regularised)
        else:
            dz, div, frobenius = self._by_vjps(s * T, z, regularised)
        out = [T * dz, T * div]
        if regularised:  # dt = T ds
            out += [T * _sum_event(dz * dz), T * frobenius]
        return tuple(out)

    def _forward_mode(self, t: Tensor, z: Tensor, regularised: bool) -> tuple[Tensor, ...]:
        """Tangents pushed with the values: all D columns of ∂f/∂z (exact), or (∂f/∂z)ε."""
        if self.hutchinson:
            dz, jv = self.net.forward_with_tangents(t, z, self.eps.unsqueeze(1))
            jv = jv.squeeze(1)
            return dz, _sum_event(jv * self.eps), _sum_event(jv * jv) if regularised else None
        d = z[0].numel()
        eye = torch.eye(d, dtype=z.dtype, device=z.device).reshape(1, d, *z.shape[1:])
        dz, jac = self.net.forward_with_tangents(t, z, eye)
        div = jac.reshape(-1, d, d).diagonal(dim1=1, dim2=2).sum(1)
        return dz, div, _sum_event(jac * jac) if regularised else None

    def _by_vjps(self, t: Tensor, z: Tensor, regularised: bool) -> tuple[Tensor, ...]:
        """For a network without forward tangents: vector-Jacobian products, D of them for
        the exact trace, one with the probe for Hutchinson's (and the regulariser)."""
        create = torch.is_grad_enabled()  # a graph through the trace only when one is wanted
        with torch.enable_grad():  # the trace needs ∂f/∂z, evaluation included
            # a fresh leaf unless the caller differentiates through z (under no_grad, e.g. in
            # the adjoint's forward solve, z may require grad yet carry no graph)
            z_ = z if create and z.requires_grad else z.detach().requires_grad_(True)
            dz = self.net(t, z_)
            vjp = None
            if self.eps is not None:
                vjp = torch.autograd.grad(dz, z_, self.eps, create_graph=create)[0]
            if self.hutchinson:
                div = _sum_event(vjp * self.eps)
            else:
                div = _exact_divergence(dz, z_, create_graph=create)
        out = (dz, div, _sum_event(vjp * vjp) if regularised else None)
        return tuple(o if create or o is None else o.detach() for o in out)


def _sum_event(x: Tensor) -> Tensor:
    """Sum over every dimension but the batch: ``(B, …) → (B,)``."""
    return x.reshape(x.shape[0], -1).sum(1)


def _exact_divergence(dz: Tensor, z: Tensor, create_graph: bool) -> Tensor:
    """Σᵢ ∂fᵢ/∂zᵢ from D vector-Jacobian products (one per coordinate)."""
    div = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for i in range(z[0].numel()):
        e = torch.zeros_like(dz)
        e.view(e.shape[0], -1)[:, i] = 1
        vjp = torch.autograd.grad(dz, z, e, create_graph=create_graph, retain_graph=True)[0]
        div = div + vjp.reshape(vjp.shape[0], -1)[:, i]
    return div


class CNF(Bijector):
    """A continuous normalizing flow block (module docstring) on ``(B, D)``, or ``(B, C, H,
    W)`` with an :class:`ODEConvNet`: ``forward`` integrates data → latent over s from 0 to 1,
    ``inverse`` from 1 to 0; each returns the integrated trace as its ldj.

    ``solver``: ``"dopri5"`` (adaptive, ``atol``/``rtol`` in training and ``test_atol``/
    ``test_rtol`` in evaluation, as the authors' tabular runs; ``first_step`` in s, else chosen
    by torchdiffeq from the derivatives, which starts small) or ``"rk4"`` (fixed steps of
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
        test_atol: float | None = None,
        test_rtol: float | None = None,
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
        self.test_atol = atol if test_atol is None else test_atol
        self.test_rtol = rtol if test_rtol is None else test_rtol
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
        by_vjps = not hasattr(dynamics.net, "forward_with_tangents")
        if dynamics.hutchinson or (regularised and by_vjps):
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
        atol, rtol = (self.atol, self.rtol) if self.training else (self.test_atol, self.test_rtol)
        kwargs = dict(rtol=rtol, atol=atol, method=self.solver, options=options)
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
        (Finlay et al. 2020, "How to train your neural ODE"; the Frobenius norm exact with
        the exact trace, by the solve's probe with Hutchinson's), which the trainer adds to
        the loss; 0 without regularisers."""
        if self.last_regularisers is None:
            return self.dynamics.sqrt_T.new_zeros(())
        kinetic, frobenius = self.last_regularisers
        return self.kinetic_energy * kinetic.mean() + self.jacobian_frobenius * frobenius.mean()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(x, 0.0, 1.0)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(z, 1.0, 0.0)

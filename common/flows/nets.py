"""Small conditioner networks shared by coupling and autoregressive layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from common.flows.distributed import BatchNorm2d

__all__ = ["MLP", "GlowConditioner", "ResNetConditioner", "ZeroConv2d"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


class MLP(nn.Module):
    """``in_features → [hidden_features] × num_hidden → out_features`` with an activation between
    layers; ``zero_init`` zeroes the output layer so the enclosing coupling starts as the
    identity (see :meth:`init_output` for other starts).

    Shapes: ``(B, in_features) → (B, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int,
        num_hidden: int,
        activation: str = "relu",
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {sorted(_ACTIVATIONS)}")
        widths = [in_features] + [hidden_features] * num_hidden
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in, w_out), _ACTIVATIONS[activation]()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], out_features))
        if zero_init:
            self.init_output(weight_scale=0.0, bias=torch.zeros(out_features))

    @torch.no_grad()
    def init_output(self, weight_scale: float, bias: Tensor) -> MLP:
        """Start the output layer at ``weight_scale`` × its default weights and ``bias``: zero
        and zeros make the enclosing layer the identity; a small scale and a map's near-identity
        parameters (torus, sphere flows) start it near the identity, inputs still distinguishable.
        Returns the network."""
        last = self.net[-1]
        last.weight.mul_(weight_scale)
        last.bias.copy_(bias)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ZeroConv2d(nn.Module):
    """Glow's zero-initialised 3×3 convolution: ``conv(x) · exp(3 · log_scale)`` with weights,
    bias and the per-channel ``log_scale`` all zero at init, so the coupling (or split prior)
    it ends starts as the identity (Kingma & Dhariwal 2018, Sec. 3.3; ``Conv2dZeros`` in the
    authors' code). Shapes: ``(B, in_channels, H, W) → (B, out_channels, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.log_scale = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * (3.0 * self.log_scale).exp()


class GlowConditioner(nn.Module):
    """Glow's coupling network NN(): conv3×3 → ReLU → conv1×1 → ReLU → zero-init conv3×3
    (Kingma & Dhariwal 2018, Sec. 3.3 and Table 1). The authors' code puts ActNorm after the
    two hidden convolutions; here they have biases instead (a deviation; ActNorm in the flow
    steps already normalises the coupling inputs).

    Shapes: ``(B, in_channels, H, W) → (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            ZeroConv2d(hidden_channels, out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _wn_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    return weight_norm(conv)  # w = g · v / ‖v‖ per output channel (Salimans & Kingma 2016)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, batch_norm: bool) -> None:
        super().__init__()
        norm = (lambda: BatchNorm2d(channels)) if batch_norm else nn.Identity
        self.net = nn.Sequential(
            norm(), nn.ReLU(), _wn_conv(channels, channels, 3),
            norm(), nn.ReLU(), _wn_conv(channels, channels, 3),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ResNetConditioner(nn.Module):
    """RealNVP's s/t network: a ResNet of ``num_blocks`` pre-activation residual blocks of
    weight-normalised 3×3 convolutions, ``hidden_channels`` wide (Dinh et al. 2017, Sec. 4.1;
    batch norm inside the blocks optional). The output convolution is zero-initialised, so the
    coupling starts as the identity.

    ``penalty()`` is RealNVP's "L2 regularization on the weight scale parameters" (the g of
    every weight-normalised convolution) with coefficient ``scale_l2`` (5·10⁻⁵ in the paper);
    the trainer adds it to the loss.

    Shapes: ``(B, in_channels, H, W) → (B, out_channels, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        num_blocks: int,
        batch_norm: bool = False,
        scale_l2: float = 0.0,
    ) -> None:
        super().__init__()
        self.scale_l2 = scale_l2
        self.stem = _wn_conv(in_channels, hidden_channels, 3)
        self.blocks = nn.Sequential(*(_ResidualBlock(hidden_channels, batch_norm)
                                      for _ in range(num_blocks)))  # fmt: skip
        self.head = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.blocks(self.stem(x))))

    def weight_scales(self) -> list[Tensor]:
        """The g parameters of every weight-normalised convolution."""
        return [m.parametrizations.weight.original0 for m in self.modules()
                if isinstance(m, nn.Conv2d) and hasattr(m, "parametrizations")]  # fmt: skip

    def penalty(self) -> Tensor:
        return self.scale_l2 * sum(g.pow(2).sum() for g in self.weight_scales())

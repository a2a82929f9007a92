"""Small conditioner networks shared by coupling and autoregressive layers."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLP"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


class MLP(nn.Module):
    """``in_features → [hidden_features] × num_hidden → out_features`` with an activation between
    layers; ``zero_init`` zeroes the last layer so the enclosing coupling starts as the identity.

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
        last = nn.Linear(widths[-1], out_features)
        if zero_init:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

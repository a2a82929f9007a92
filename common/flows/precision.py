"""Mixed precision for flows: the networks in bfloat16, the flow itself in float32.

Autocasting a whole flow would put its data stream and log-determinants in bfloat16 (8 bits of
mantissa, a relative error of 2⁻⁸ ≈ 0.4 % per operation): a 1×1 convolution's einsum would
return bfloat16 z, and the sums of thousands of log-scales and of the base density's z²/2
would each lose about two significant digits — errors of whole nats per image. Only the
conditioner networks (the convolutions, where the time goes) need low precision. So:

    with network_autocast(torch.bfloat16):
        log_prob = flow.log_prob(x)

runs every network called through :func:`run_network` (the coupling layers' conditioners)
under ``torch.autocast`` and casts its output back to the input's dtype. The elementwise
maps, the 1×1 convolutions, ActNorm, the log-determinants and the base density are computed
and accumulated in float32 (the input's dtype) as always. ``tests/test_precision.py`` states
the resulting error of the log-density against float32.

Outside the block (and for evaluation, which the trainer always runs in float32) nothing
changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["network_autocast", "network_dtype", "run_network"]

_NETWORK_DTYPE: torch.dtype | None = None


def network_dtype() -> torch.dtype | None:
    """The dtype networks run in now (None: their parameters' dtype, no autocast)."""
    return _NETWORK_DTYPE


@contextmanager
def network_autocast(dtype: torch.dtype | None) -> Iterator[None]:
    """Within the block, :func:`run_network` autocasts to ``dtype`` (None: no autocast)."""
    global _NETWORK_DTYPE
    previous, _NETWORK_DTYPE = _NETWORK_DTYPE, dtype
    try:
        yield
    finally:
        _NETWORK_DTYPE = previous


def run_network(net: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``net(x)``, under autocast to :func:`network_dtype` if one is set, returned in ``x``'s
    dtype (so that what the flow computes from it stays in float32)."""
    if _NETWORK_DTYPE is None:
        return net(x)
    with torch.autocast(x.device.type, dtype=_NETWORK_DTYPE):
        out = net(x)
    return out.to(x.dtype)

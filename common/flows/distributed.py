"""Batch statistics over every process of a data-parallel run (``torch.distributed``).

Under data parallelism (``torchrun``, :mod:`common.run.distributed`) each of the W processes
holds a shard of B/W examples of the global batch of B. A layer that normalises with the
statistics of its batch (batch norm; ActNorm's data-dependent initialisation) must use the
global batch's, or it computes a different function on each rank, and a different one from a
single process on the whole batch. Here the statistics are all-reduced:

    n = Σ_r n_r,    μ = Σ_r Σ_i x_ri / n,    σ² = Σ_r Σ_i (x_ri − μ)² / n,

two all-reduces (the centred second pass is as accurate as the single-process variance; the
one-pass n·E[x²] − n·μ² cancels catastrophically for large means). The all-reduce is
differentiable: its backward all-reduces the gradient with
respect to the statistics, so that each rank's backward pass carries every rank's share of
the loss through them, and DDP's averaged gradient equals the single-process gradient of the
mean loss of the global batch (the construction of ``torch.nn.SyncBatchNorm``, which refuses
CPU tensors and so cannot run under gloo).

Outside a distributed run (or with one process) every function here is the plain
single-process computation, unchanged, so results of ordinary runs do not move.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["BatchNorm2d", "channel_moments", "world_size"]


def world_size() -> int:
    """The number of processes of the current data-parallel run; 1 outside one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_sum(t: Tensor) -> Tensor:
    """Σ over ranks, differentiable: the backward all-reduces the gradient (PyTorch's
    functional collectives; ``torch.distributed.nn``'s all_reduce is deprecated for them)."""
    from torch.distributed._functional_collectives import all_reduce, wait_tensor

    return wait_tensor(all_reduce(t, "sum", dist.group.WORLD))


def _per_channel(v: Tensor, like: Tensor) -> Tensor:
    """``(C,)`` → broadcastable against ``like`` ``(B, C, ...)``."""
    return v.view(1, -1, *([1] * (like.ndim - 2)))


def channel_moments(x: Tensor, unbiased: bool = False) -> tuple[Tensor, Tensor, int]:
    """Mean and variance per channel of ``x`` ``(B, C, ...)`` over every dim but the channel,
    over the global batch of a distributed run, and the number n of values per channel they
    are taken over. The variance divides by n, or by n − 1 if ``unbiased``. Differentiable."""
    dims = [0, *range(2, x.ndim)]
    local_n = x.numel() // x.shape[1]
    if world_size() == 1:
        return x.mean(dim=dims), x.var(dim=dims, unbiased=unbiased), local_n
    n_and_sum = _all_sum(torch.cat([x.new_full((1,), float(local_n)), x.sum(dim=dims)]))
    n, mean = n_and_sum[0], n_and_sum[1:] / n_and_sum[0]
    squares = _all_sum(((x - _per_channel(mean, x)) ** 2).sum(dim=dims))
    return mean, squares / (n - 1 if unbiased else n), int(n.item())


class BatchNorm2d(nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` whose training-mode statistics are the global batch's in a
    distributed run (:func:`channel_moments`); exactly ``nn.BatchNorm2d`` otherwise, with
    the same parameters, buffers and state-dict keys. Running averages follow PyTorch's
    convention: r ← (1 − m)·r + m·s, with the unbiased variance. Shapes: ``(B, C, H, W)``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        mean, var, n = channel_moments(x)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
        x_hat = (x - _per_channel(mean, x)) * _per_channel(torch.rsqrt(var + self.eps), x)
        return x_hat * _per_channel(self.weight, x) + _per_channel(self.bias, x)

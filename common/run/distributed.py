"""Data-parallel training under ``torchrun`` (``torch.distributed``), inside the one loop.

``torchrun --standalone --nproc-per-node W -m papers.glow.train --config …`` starts W copies of
the entry point; each learns its rank from the environment (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``) and :func:`process_group` joins them (gloo on CPU, NCCL on GPUs, one GPU per
process: ``cuda:LOCAL_RANK``). A run on W processes with global batch B then takes the same
steps as one process with batch B:

- **The data.** Every rank seeds the same global RNG and draws the *whole* step's input (the
  epoch's permutation from (seed, epoch), flips, translations, dequantization noise, base
  samples: :meth:`~common.run.objectives.Objective.batch`), then keeps its shard of B/W
  examples (:meth:`~common.run.objectives.Objective.shard`). This is the seeded sampler: the
  global batch is the single process's, and the RNG streams stay identical on every rank, so
  rank 0's checkpoint restores them all. (``DistributedSampler`` would shard each epoch's
  permutation instead: a valid scheme, but not the single process's batches.)
- **The gradient.** The loss is the mean over the shard, and ``DistributedDataParallel``
  averages the gradients over ranks: the gradient of the mean loss over the global batch.
  The optimiser, schedule, clipping (of the averaged gradient) and Polyak average then run
  identically on every rank.
- **Batch statistics.** Batch norm's statistics and ActNorm's data-dependent initialisation
  use the global batch's moments, all-reduced (:mod:`common.flows.distributed`); the running
  averages therefore agree on every rank, and DDP's buffer broadcast changes nothing.
- **Noise inside the loss.** The stochastic trace estimators of i-ResNet and FFJORD draw
  their probes in the forward pass; under W > 1 those draws come from an RNG forked per rank
  and seeded by (seed, step, rank) (:func:`loss_rng`), so that ranks draw independent probes
  and a resumed run draws the same ones. Such runs equal a single process in distribution,
  not bit for bit; every other objective's loss draws nothing.
- **Who writes.** Rank 0 alone logs to MLflow and writes the config, checkpoints, summary and
  figures. Every rank validates on the whole validation split (the same numbers, so early
  stopping decides alike without communication); only rank 0 tests.

Equivalence holds up to floating-point rounding: the sums over the batch are split in two.
``tests/test_distributed.py`` trains 2 gloo ranks against 1 process and states its tolerance.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Ranks", "loss_rng", "process_group"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run (``torchrun``'s environment)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Ranks:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)),
                   int(env.get("WORLD_SIZE", 1)))  # fmt: skip

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: ``cuda:LOCAL_RANK`` (set as the current device); the CPU
        unchanged."""
        if device.type != "cuda" or not self.distributed:
            return device
        device = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(device)
        return device

    def mean(self, value: Tensor) -> Tensor:
        """The mean of a scalar over every rank (e.g. the loss of the global batch)."""
        if not self.distributed:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is True on any rank (a stop request that reached one)."""
        if not self.distributed:
            return flag
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t)
        return bool(t.item())


@contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """Join the run's process group for the block (NCCL for a CUDA device, else gloo) and
    leave it afterwards; outside ``torchrun`` (one process), nothing to join."""
    ranks = Ranks.from_env()
    if not ranks.distributed or dist.is_initialized():
        yield ranks
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


@contextmanager
def loss_rng(ranks: Ranks, seed: int, step: int, device: torch.device) -> Iterator[None]:
    """Under W > 1 processes, run the block (a step's loss and gradient) on an RNG forked and
    seeded by (seed, step, rank): draws inside the loss differ between ranks and repeat on
    resume, and the global stream, which must stay identical on every rank, is untouched.
    With one process, the global stream, as always."""
    if not ranks.distributed:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        (state,) = np.random.SeedSequence([seed, step, ranks.rank]).generate_state(1)
        torch.manual_seed(int(state))
        yield

"""Density vs sampling cost of MAF and IAF, measured: ``python -m papers.maf_iaf.cost
--profile cpu --out runs/cpu/maf_iaf/measurements/cost.json``.

MAF and IAF are the same masked autoregressive layer used in opposite directions (MAF paper,
Sec. 3.2; IAF paper, Sec. 4). A MAF layer evaluates log p(x) in one MADE pass and needs D
passes to draw a sample, one per feature in the autoregressive order; an IAF layer draws a
sample in one pass and needs D to evaluate the density of a given x. This module times both
operations of both flows at two dimensions (63, the patches'; 784, MNIST's), counts the MADE
passes each makes (a hook on the MADE), and writes the measurement for the report
(:mod:`common.run.reports.measurements`): a table and a log-log plot of time against D.

One layer per flow (a stack of K layers costs K times as much in either direction), batch 100,
one CPU thread, no gradient; the median of a few repeats after a warm-up call.
"""

from __future__ import annotations

import platform
import statistics
import time

import torch

from common.flows.autoregressive import InverseAutoregressive, MaskedAutoregressive
from common.flows.bijector import Compose
from common.flows.distributions import StandardNormal
from common.flows.elementwise import Affine
from common.flows.flow import Flow
from common.run.reports.measurements import measurement_cli

__all__ = ["PROFILES", "measure", "main"]

# profile → dimensions, MADE width, batch size, timed repeats
PROFILES = {
    "smoke": {"dims": [8, 16], "hidden": 16, "batch": 16, "repeats": 1},
    "cpu": {"dims": [63, 784], "hidden": 256, "batch": 100, "repeats": 3},
    "paper": {"dims": [63, 784], "hidden": 256, "batch": 100, "repeats": 3},
}


def _flow(kind: str, dims: int, hidden: int) -> tuple[Flow, list[int]]:
    """A one-layer MAF or IAF on ``dims`` features and a counter of its MADE passes."""
    layer_cls = MaskedAutoregressive if kind == "MAF" else InverseAutoregressive
    layer = layer_cls(dims, Affine, hidden_features=hidden, num_hidden=2)
    made = layer.made if kind == "MAF" else layer.bijector.made
    torch.nn.init.normal_(made.output.weight, std=0.01)  # not the identity a zero init gives
    calls = [0]
    made.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return Flow(Compose(layer), StandardNormal(dims)).eval(), calls


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def measure(profile: str) -> dict:
    """Time log_prob and sample of a one-layer MAF and IAF at each dimension of ``profile``."""
    p = PROFILES[profile]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows, series = [], {}
    try:
        for kind in ("MAF", "IAF"):
            for dims in p["dims"]:
                flow, calls = _flow(kind, dims, p["hidden"])
                x = torch.randn(p["batch"], dims)
                for op, fn in (("log_prob", lambda f=flow, x=x: f.log_prob(x)),
                               ("sample", lambda f=flow: f.sample(p["batch"]))):  # fmt: skip
                    calls[0] = 0
                    fn()
                    passes = calls[0]
                    seconds = _time(fn, p["repeats"])
                    rows.append([kind, dims, op, passes, round(1000 * seconds, 2)])
                    series.setdefault(f"{kind} {op}", []).append([dims, 1000 * seconds])
    finally:
        torch.set_num_threads(threads)
    return {
        "title": "Density vs sampling cost: MAF and IAF",
        "intro": (
            "Time of one call on a batch of "
            f"{p['batch']} for a one-layer flow (a MADE of 2 × {p['hidden']} ReLU units, "
            "affine conditionals), one CPU thread, no gradient, median of "
            f"{p['repeats']} calls after a warm-up; *MADE passes* is counted by a hook on the "
            "MADE. MAF evaluates the density in one pass and samples in D; IAF the reverse "
            "(MAF paper, Sec. 3.2). Measured by `python -m papers.maf_iaf.cost`."
        ),
        "environment": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "columns": ["flow", "D", "operation", "MADE passes", "time (ms)"],
        "rows": rows,
        "plot": {"xlabel": "dimension D", "ylabel": "time per call (ms)", "series": series},
    }


def main(argv: list[str] | None = None) -> None:
    measurement_cli("papers.maf_iaf.cost", __doc__, list(PROFILES), measure, argv)


if __name__ == "__main__":
    main()

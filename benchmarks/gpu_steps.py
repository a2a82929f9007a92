"""``python -m benchmarks.gpu_steps``: the paper-profile training step of an image flow on
synthetic batches of its dataset's shape (CIFAR-10: 3×32×32, MNIST: 1×28×28, uint8), timed
for a while, with the projected time to the paper's number of steps.

    python -m benchmarks.gpu_steps --seconds 180 --precision bf16 --channels-last --compile \\
        --out runs/gpu_steps.json

For each experiment (default: Glow and RealNVP on CIFAR-10, NICE on MNIST, from
``papers/<paper>/configs/paper/``) it builds the paper's model at the paper's batch size, runs
the loop's step (the objective's loss under ``train.precision``, its gradient, the optimiser's
update; the same functions as :mod:`common.run.loop`), discards the first steps (ActNorm's
initialisation, compilation, the allocator warming up) and times the rest until ``--seconds``
have passed. Reported per experiment: images/s, the time per step, the peak GPU memory of the
process, and the projected training time to the config's ``train.max_steps`` (the paper's
number of epochs; validation and checkpoints not included), naming the device.

The data are random levels, not images: a step's cost does not depend on the values (no
data-dependent control flow in these models). Runs on a CPU too (``--device cpu``, e.g. with
``--batch-size 2`` to check that it works); GPU figures in the paper READMEs come only from a
GPU run of this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common.files import write_atomic
from common.flows.precision import network_autocast
from common.run.config import load_config
from common.run.load import stand_in_dataset
from common.run.loop import make_optimizer, resolve_device
from common.run.steps import compile_blocker, compile_optimizer_step, eager_gradient

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("glow/cifar10_glow", "realnvp/cifar10_realnvp", "nice/mnist_nice")
SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _loss(model, x: torch.Tensor) -> torch.Tensor:
    """Maximum likelihood's loss (:class:`~common.run.objectives.MaximumLikelihood`)."""
    y, dequant_ldj = model.dequantize(x)
    return -model.log_prob_continuous(y, dequant_ldj).mean()


def measure(experiment: str, device: torch.device, seconds: float, precision: str,
            channels_last: bool, compile_step: bool, batch_size: int | None,
            warmup: int = 3) -> dict:  # fmt: skip
    import importlib

    paper, name = experiment.split("/")
    config = importlib.import_module(f"papers.{paper}.config")
    cfg = load_config(config.CONFIG, REPO / "papers" / paper / "configs" / "paper" / f"{name}.yaml")
    shape = SHAPES[cfg.data.name]
    batch = batch_size or cfg.train.batch_size
    spec = {"name": cfg.data.name, "event_shape": list(shape), "num_levels": 256,
            "num_classes": 10, "context_features": 0, "dtype": "uint8"}  # fmt: skip
    torch.manual_seed(0)
    model = config.build_model(cfg.model, stand_in_dataset(spec)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    compiled = compile_step and compile_blocker() is None
    optimizer = make_optimizer(cfg.train, model.parameters(), compiled)
    optimizer_step = compile_optimizer_step(optimizer) if compiled else optimizer.step
    loss_fn = torch.compile(_loss, dynamic=False) if compiled else _loss
    x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if precision == "bf16" else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> float:
        with network_autocast(dtype):
            loss = eager_gradient(loss_fn, model, x)
        optimizer_step()
        return loss

    model.train()
    for _ in range(warmup):  # ActNorm's init, compilation, allocator warm-up
        loss = step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, start = 0, time.perf_counter()
    while True:
        loss = step()
        steps += 1
        if steps % 5 == 0 or device.type != "cuda":
            sync()
            if time.perf_counter() - start >= seconds:
                break
    sync()
    elapsed = time.perf_counter() - start
    step_s = elapsed / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "experiment": experiment, "device": device_name(device), "batch_size": batch,
        "precision": precision, "channels_last": channels_last, "compiled": compiled,
        "steps_timed": steps, "seconds_timed": round(elapsed, 2),
        "step_ms": round(1000 * step_s, 2), "images_per_s": round(batch / step_s, 1),
        "peak_memory_mb": None if peak is None else round(peak),
        "paper_steps": cfg.train.max_steps, "paper_batch_size": cfg.train.batch_size,
        "projected_hours": round(cfg.train.max_steps * cfg.train.batch_size / (batch / step_s)
                                 / 3600, 1),
        "last_loss": loss.item(),
        "torch": torch.__version__,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--experiments",
        nargs="+",
        default=list(EXPERIMENTS),
        help="paper/experiment of papers/<paper>/configs/paper/",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seconds", type=float, default=180.0, help="timed per experiment")
    parser.add_argument("--precision", default="float32", choices=["float32", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override the paper's batch (a quick check; the projection then "
                             "still counts the paper's images)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    results = []
    for experiment in args.experiments:
        result = measure(experiment, device, args.seconds, args.precision, args.channels_last,
                         args.compile, args.batch_size)  # fmt: skip
        results.append(result)
        print(json.dumps(result), flush=True)
    print("\n| experiment | device | batch | images/s | ms/step | peak memory | projected |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        memory = "—" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb'] / 1024:.1f} GiB"
        print(f"| {r['experiment']} | {r['device']} | {r['batch_size']} | {r['images_per_s']} | "
              f"{r['step_ms']} | {memory} | {r['projected_hours']} h |")  # fmt: skip
    if args.out:
        write_atomic(args.out, json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()

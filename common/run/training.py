"""The training loop: maximum likelihood for any :class:`~common.flows.flow.Flow`.

``train_and_evaluate(cfg, build_model, workdir)`` builds the data and the model, trains with
the configured optimizer and schedule, validates every ``eval_every`` steps (keeping the best
model), checkpoints every ``checkpoint_every`` steps, stops early on a plateau, and finally
evaluates the best-validation model on the test set.

The loss is the mean NLL in nats per example plus ``model.penalty()`` (a regulariser such as
RealNVP's L2 on weight-norm scales; 0 for most models). Options: random horizontal flips of
training images (``train.hflip``), and Polyak averaging (``train.polyak_decay``: an
exponential moving average of the weights is what gets validated, kept and tested).

Determinism: batch order is a function of (seed, epoch) alone, and every random draw of
training (dequantization noise) comes from the global torch RNG whose state is checkpointed;
evaluation runs under a forked RNG with a fixed seed. So a run resumed from a checkpoint ends
bit-identical, on CPU, to one that never stopped.

Outputs in ``workdir``: ``config.yaml``, ``checkpoints/{last,best}.pt``, ``figures/*.png``,
``metrics.json``; the same go to MLflow through the tracking facade.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from common.data import Dataset, load_dataset
from common.flows.dequantize import bits_per_dim
from common.flows.flow import Flow
from common.run.config import (
    ConfigError,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    flatten,
    save_config,
)
from common.run.plotting import save_curves, save_density_2d, save_image_grid
from common.run.tracking import NullTracker, git_state, write_metrics_json

__all__ = [
    "NonFiniteLossError",
    "TrainState",
    "evaluate",
    "load_checkpoint",
    "make_optimizer",
    "resolve_device",
    "sample_figure_name",
    "save_checkpoint",
    "start_run",
    "train_and_evaluate",
]

EVAL_SEED = 1234  # dequantization noise for validation/test: the same for every evaluation


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or gradient; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """Everything besides model/optimizer/scheduler needed to resume exactly."""

    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    evals_since_best: int = 0
    stopped_early: bool = False
    wall_time_s: float = 0.0  # training time summed over every (resumed) call
    history: list[dict[str, float]] = field(default_factory=list)


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name in ("adam", "adamax"):
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.Adamax
        return cls(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=o.lr, eps=o.eps, momentum=o.momentum, weight_decay=o.weight_decay
        )
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(s: ScheduleConfig, step: int, max_steps: int) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then the schedule."""
    if s.warmup_steps and step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.name == "exponential":
        return s.gamma ** (step - s.warmup_steps)
    if s.name == "cosine":
        progress = (step - s.warmup_steps) / max(1, max_steps - s.warmup_steps)
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Indices of the training batch at ``step``: a fresh permutation per epoch drawn from a
    generator seeded by (seed, epoch) — reproducible, resumable at any step, drop-last."""
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)[k * batch_size : (k + 1) * batch_size]


@torch.no_grad()
def evaluate(model: Flow, x: Tensor, batch_size: int, device: torch.device) -> dict[str, float]:
    """Mean NLL (nats/example) of ``x``, its bits/dim, and the NLL of the dequantized data on
    its continuous scale (NICE's unit). Dequantization noise is drawn from a fixed seed."""
    was_training = model.training
    model.eval()
    total = cont = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        for chunk in x.split(batch_size):
            parts = model.log_prob_parts(chunk.to(device))
            total += parts.total.sum().item()
            cont += parts.continuous.sum().item()
    model.train(was_training)
    n, num_dims = len(x), x[0].numel()
    nll = -total / n
    return {
        "nll": nll,
        "bpd": bits_per_dim(torch.tensor(-nll), num_dims).item(),
        "nll_continuous": -cont / n,
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config asks for device 'cuda' but no GPU is visible")
    return torch.device(name)


def save_checkpoint(path: Path, model, optimizer, scheduler, state: TrainState, extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": asdict(state),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            **extra,
        },
        tmp,
    )
    tmp.replace(path)  # atomic: an interrupted save never corrupts the last good checkpoint


def _figures(model: Flow, data: Dataset, cfg: RunConfig, workdir: Path, state: TrainState):
    fig_dir = workdir / "figures"
    fig_dir.mkdir(exist_ok=True)
    title = f"{cfg.paper} · {cfg.experiment} · seed {cfg.seed}"
    paths = [save_curves(state.history, fig_dir / "curves.png", title)]
    model.eval()
    if data.is_image and data.num_levels and cfg.train.num_samples:
        for t in cfg.train.sample_temperatures:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(EVAL_SEED)  # the same base draw at every temperature
                samples = model.sample(cfg.train.num_samples, temperature=t)
            path = fig_dir / sample_figure_name(t)
            paths.append(save_image_grid(samples, data.num_levels, path, f"{title} · T = {t:g}"))
    elif data.num_dims == 2:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(EVAL_SEED)
            paths.append(save_density_2d(model, data.x_test, fig_dir / "samples.png", title))
    return paths


def sample_figure_name(temperature: float) -> str:
    """``samples.png`` at T = 1 (what every image run draws), ``samples_T0.7.png`` otherwise."""
    return "samples.png" if temperature == 1.0 else f"samples_T{temperature:g}.png"


class Polyak:
    """An exponential moving average of the weights, evaluated instead of the raw weights
    (Polyak averaging, as the Glow authors' code does). Buffers (running statistics, the
    ActNorm flag) are copied, not averaged."""

    def __init__(self, model: Flow, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    @torch.no_grad()
    def update(self, model: Flow) -> None:
        self.averaged.update_parameters(model)
        for mine, theirs in zip(self.averaged.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)

    @property
    def model(self) -> Flow:
        return self.averaged.module


def load_checkpoint(
    path: Path, resolved: str, model, optimizer, scheduler
) -> tuple[TrainState, str | None, dict[str, Any]]:
    """Restore the model, optimizer, scheduler and RNG streams from the checkpoint ``path``;
    return the training state, the MLflow run id and the raw checkpoint (for extras). Raises
    ConfigError if the checkpoint was written by a different config (``resolved`` JSON)."""
    # on the CPU first: load_state_dict copies into the model's (and optimizer's) devices
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("config") != resolved:
        raise ConfigError(
            f"{path.parent.parent} holds a checkpoint of a different config (see its "
            "config.yaml); resume with the same config, or use another --workdir."
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["torch_rng"].cpu())
    if ckpt.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in ckpt["cuda_rng"]])
    state = TrainState(**ckpt["state"])
    print(f"resuming from {path} at step {state.step}")
    return state, ckpt.get("run_id") or None, ckpt


def start_run(
    cfg, tracker, workdir: Path, run_id: str | None, *, dataset: str, data_md5: str,
    num_params: int, device: torch.device,
) -> str | None:  # fmt: skip
    """Write ``config.yaml`` and start the MLflow run (or reopen ``run_id`` when resuming)
    with the tags every run carries; returns the run id."""
    save_config(cfg, workdir / "config.yaml")
    commit, dirty = git_state()
    tags = {
        "paper": cfg.paper, "experiment": cfg.experiment, "scale": cfg.scale,
        "seed": cfg.seed, "dataset": dataset, "model": cfg.model.name,
        "git_commit": commit, "git_dirty": dirty, "data_md5": data_md5,
        "num_params": num_params, "device": str(device),
    }  # fmt: skip
    params = flatten(cfg.model_dump(mode="json"))
    new_run = run_id is None
    run_id = tracker.start(f"{cfg.experiment}/seed{cfg.seed}", tags, params, run_id)
    if new_run:
        tracker.log_artifact(workdir / "config.yaml")
    return run_id


def train_and_evaluate(
    cfg: RunConfig,
    build_model: Callable[[Any, Dataset], Flow],
    workdir: str | Path,
    tracker: NullTracker | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``build_model(cfg.model, dataset)`` as ``cfg`` says; return the final metrics.

    Resumes from ``workdir/checkpoints/last.pt`` if present. ``stop_after``: checkpoint and
    return after this many steps in this call (for preemptible jobs; the run is resumable).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tracker = tracker or NullTracker()
    resolved = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)

    data = load_dataset(cfg.data.name, cfg.data.root)
    if cfg.train.hflip and not data.is_image:
        raise ConfigError(f"train.hflip needs image data; {cfg.data.name!r} is not")
    model = build_model(cfg.model, data).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    tc = cfg.train
    optimizer = make_optimizer(tc, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(tc.schedule, step, tc.max_steps)
    )
    polyak = Polyak(model, tc.polyak_decay) if tc.polyak_decay else None
    state = TrainState()
    last_ckpt, best_ckpt = workdir / "checkpoints" / "last.pt", workdir / "checkpoints" / "best.pt"
    run_id = None
    resuming = last_ckpt.exists()
    if resuming:
        state, run_id, ckpt = load_checkpoint(last_ckpt, resolved, model, optimizer, scheduler)
        if polyak is not None:
            polyak.averaged.load_state_dict(ckpt["polyak"])
    run_id = start_run(
        cfg, tracker, workdir, run_id, dataset=cfg.data.name, data_md5=data.md5,
        num_params=num_params, device=device,
    )  # fmt: skip
    extra = {"run_id": run_id or "", "config": resolved}

    def checkpoint() -> None:
        state.wall_time_s = wall_before + time.perf_counter() - wall_start
        more = extra if polyak is None else {**extra, "polyak": polyak.averaged.state_dict()}
        save_checkpoint(last_ckpt, model, optimizer, scheduler, state, more)

    x_train = data.x_train
    model.train()
    steps_this_call, window_start, window_examples = 0, time.perf_counter(), 0
    wall_start, wall_before = time.perf_counter(), state.wall_time_s
    bar = tqdm(total=tc.max_steps, initial=state.step, disable=not progress, mininterval=2.0,
               desc=f"{cfg.paper}/{cfg.experiment}/seed{cfg.seed}")  # fmt: skip
    try:
        while state.step < tc.max_steps and not state.stopped_early:
            idx = batch_indices(len(x_train), tc.batch_size, cfg.seed, state.step)
            x = x_train[idx].to(device)
            if tc.hflip:  # horizontal flips of a random half of the batch (RealNVP, Sec. 4.1)
                flip = torch.rand(len(x), device=device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = -model.log_prob(x).mean()  # nats per example
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss.item()}) at step {state.step}. The last "
                    f"good checkpoint ({last_ckpt}, if any) was kept. Try a lower learning rate "
                    "(train.optim.lr), gradient clipping (train.grad_clip) or a warm-up "
                    "(train.schedule.warmup_steps)."
                )
            optimizer.zero_grad(set_to_none=True)
            (loss + model.penalty()).backward()
            max_norm = tc.grad_clip if tc.grad_clip is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if not torch.isfinite(grad_norm):
                raise NonFiniteLossError(
                    f"non-finite gradient norm at step {state.step} (loss {loss.item():.4g}). "
                    f"The last good checkpoint ({last_ckpt}, if any) was kept; try "
                    "train.grad_clip or a lower train.optim.lr."
                )
            optimizer.step()
            scheduler.step()
            if polyak is not None:
                polyak.update(model)
            state.step += 1
            steps_this_call += 1
            window_examples += len(x)
            bar.update(1)

            if state.step % tc.log_every == 0:
                elapsed = time.perf_counter() - window_start
                record = {
                    "train/nll": loss.item(),
                    "train/bpd": bits_per_dim(-loss.detach(), data.num_dims).item(),
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/grad_norm": grad_norm.item(),
                    "train/samples_per_s": window_examples / max(elapsed, 1e-9),
                    "train/wall_time_s": wall_before + time.perf_counter() - wall_start,
                }
                tracker.log_metrics(record, state.step)
                state.history.append({"step": state.step, "train/nll": record["train/nll"]})
                window_start, window_examples = time.perf_counter(), 0
                bar.set_postfix(nll=f"{loss.item():.3f}")

            if state.step % tc.eval_every == 0 or state.step == tc.max_steps:
                eval_model = model if polyak is None else polyak.model
                val = evaluate(eval_model, data.x_val, tc.eval_batch_size, device)
                if not math.isfinite(val["nll"]):
                    raise NonFiniteLossError(
                        f"non-finite validation NLL at step {state.step}; last good checkpoint "
                        f"kept at {last_ckpt}."
                    )
                tracker.log_metrics({f"val/{k}": v for k, v in val.items()}, state.step)
                state.history.append({"step": state.step, "val/nll": val["nll"]})
                if val["nll"] < state.best_val:
                    state.best_val, state.best_step, state.evals_since_best = (
                        val["nll"], state.step, 0,
                    )  # fmt: skip
                    best_ckpt.parent.mkdir(parents=True, exist_ok=True)
                    torch.save(eval_model.state_dict(), best_ckpt)
                else:
                    state.evals_since_best += 1
                    if tc.patience is not None and state.evals_since_best >= tc.patience:
                        state.stopped_early = True
                bar.set_postfix(nll=f"{loss.item():.3f}", val=f"{val['nll']:.3f}")
                if not progress:
                    print(
                        f"step {state.step}/{tc.max_steps}  train nll {loss.item():.4f}  "
                        f"val nll {val['nll']:.4f}  val bpd {val['bpd']:.4f}",
                        flush=True,
                    )

            if state.step % tc.checkpoint_every == 0:
                checkpoint()
            if stop_after is not None and steps_this_call >= stop_after:
                checkpoint()
                bar.close()
                return {"stopped_at_step": state.step}
    except BaseException as exc:
        bar.close()
        tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    bar.close()
    checkpoint()

    # Test evaluation of the best-validation model.
    model.load_state_dict(torch.load(best_ckpt, map_location=device, weights_only=True))
    test = evaluate(model, data.x_test, tc.eval_batch_size, device)
    val = evaluate(model, data.x_val, tc.eval_batch_size, device)
    final = {f"test/{k}": v for k, v in test.items()}
    final |= {f"best_val/{k}": v for k, v in val.items()}
    final["train/wall_time_s"] = state.wall_time_s
    tracker.log_metrics(final, state.step)
    for path in _figures(model, data, cfg, workdir, state):
        tracker.log_artifact(path, "figures")
    tracker.log_artifact(best_ckpt, "checkpoints")
    payload = {
        "run_id": run_id,
        "paper": cfg.paper,
        "experiment": cfg.experiment,
        "scale": cfg.scale,
        "seed": cfg.seed,
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "num_params": num_params,
        "steps": state.step,
        "best_step": state.best_step,
        "stopped_early": state.stopped_early,
        "device": str(device),
        "wall_time_s": state.wall_time_s,
        "metrics": final,
    }
    write_metrics_json(workdir / "metrics.json", payload)
    tracker.log_artifact(workdir / "metrics.json")
    tracker.end("FINISHED")
    return payload

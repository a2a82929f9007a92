"""The one training loop of the repository, for every objective.

``train(cfg, objective, workdir)`` seeds the run, lets the objective build its problem and
model, and then, step by step: asks the objective for the step's input and loss, stops on a
non-finite loss or gradient (keeping the last good checkpoint), steps the optimiser and the
learning-rate schedule, updates the Polyak average (``train.polyak_decay``), logs every
``log_every`` steps, validates every ``eval_every`` steps (keeping the best model when the
objective selects on a validation metric, stopping early after ``train.patience`` validations
without a gain), and checkpoints every ``checkpoint_every`` steps. At the end it tests the
selected model (best or final), saves the figures, writes the typed run summary
(``metrics.json``, :class:`~common.run.summary.RunSummary`) and marks the MLflow run FINISHED;
any exception marks it FAILED (KILLED on Ctrl-C) before it propagates.

The loss is the objective's loss plus ``model.penalty()`` (a regulariser such as RealNVP's L2
on weight-norm scales; 0 for most models). ``train.compile`` compiles the step
(:mod:`common.run.steps`): the loss and its gradient as one graph (``compile_mode: graph``) or
the loss alone (``loss``), and the optimiser's update; the random draws stay in eager mode, so
the random stream is the same either way.

Determinism: every random draw of training comes from the global torch RNG (seeded with
``cfg.seed``, its state checkpointed) or from generators seeded by (seed, step); evaluations
run on a forked RNG with a fixed seed. So a run resumed from a checkpoint ends bit-identical,
on CPU, to one that never stopped.

Outputs in ``workdir``: ``config.yaml``, ``checkpoints/{last,best or final}.pt``,
``figures/*.png``, ``metrics.json``; the same go to MLflow through the tracking facade.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from tqdm import tqdm

from common.flows.flow import Flow
from common.run.config import ConfigError, RunBase, ScheduleConfig, TrainBase, flatten, save_config
from common.run.objectives import Objective
from common.run.steps import CompiledGradient, compile_optimizer_step, eager_gradient
from common.run.summary import Budget, RunSummary, replace_atomically
from common.run.tracking import NullTracker, git_state

__all__ = ["NonFiniteLossError", "StoppedAt", "TrainState", "lr_factor", "resolve_device", "train"]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or gradient; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """Everything besides model, optimiser and scheduler needed to resume exactly."""

    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    evals_since_best: int = 0
    stopped_early: bool = False
    wall_time_s: float = 0.0  # training time summed over every (resumed) call
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class StoppedAt:
    """``train(..., stop_after=N)`` returned after checkpointing at this step; run it again to
    resume."""

    step: int


def make_optimizer(cfg: TrainBase, params) -> torch.optim.Optimizer:
    """The configured optimiser. Eager runs use its multi-tensor (``foreach``) form: the same
    arithmetic as the per-tensor loop PyTorch defaults to on CPU, in fewer dispatches (a step
    of a small flow is dominated by them). Compiled runs (``train.compile``) hold the learning
    rate in a tensor, so the compiled update reads the schedule's value instead of
    recompiling for each new one (PyTorch allows a tensor learning rate only there)."""
    o = cfg.optim
    lr = torch.tensor(o.lr) if cfg.compile else o.lr
    common = {"lr": lr, "weight_decay": o.weight_decay, "foreach": not cfg.compile}
    if o.name in ("adam", "adamax"):
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.Adamax
        return cls(params, betas=o.betas, eps=o.eps, **common)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, eps=o.eps, momentum=o.momentum, **common)
    return torch.optim.SGD(params, momentum=o.momentum, **common)


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config asks for device 'cuda' but no GPU is visible")
    return torch.device(name)


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


def _save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` atomically: an interrupted save never corrupts the file already there."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


class _Run:
    """One call of :func:`train`: the state the loop's steps share."""

    def __init__(self, cfg: RunBase, objective: Objective, workdir: Path, tracker) -> None:
        self.cfg, self.tc, self.objective, self.tracker = cfg, cfg.train, objective, tracker
        self.workdir, self.ckpt_dir = workdir, workdir / "checkpoints"
        self.resolved = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        if self.tc.patience is not None and objective.select_on is None:
            raise ConfigError("train.patience needs an objective that selects a best model")
        self.model = objective.build(self.device).to(self.device)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = make_optimizer(self.tc, self.model.parameters())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(self.tc.schedule, step, self.tc.max_steps)
        )
        self.polyak = Polyak(self.model, self.tc.polyak_decay) if self.tc.polyak_decay else None
        self.state = TrainState()
        self.run_id: str | None = None
        self.params = list(self.model.parameters())
        compiled, mode = self.tc.compile, self.tc.compile_mode
        self.compiled_gradient = (
            CompiledGradient(self.model, objective.loss) if compiled and mode == "graph" else None
        )
        # static shapes: every training batch has the same shape (drop-last); in 'loss' mode a
        # data-dependent init (ActNorm) recompiles once
        loss = objective.loss
        self.loss_fn = torch.compile(loss, dynamic=False) if compiled and mode == "loss" else loss
        self.optimizer_step = (
            compile_optimizer_step(self.optimizer) if compiled else self.optimizer.step
        )

    @property
    def eval_model(self) -> Flow:
        return self.model if self.polyak is None else self.polyak.model

    # --- checkpoints ------------------------------------------------------------------------

    def restore(self, path: Path) -> None:
        """Restore model, optimiser, scheduler, Polyak average and RNG streams; refuse a
        checkpoint written by a different config."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # then into the devices
        if ckpt.get("config") != self.resolved:
            raise ConfigError(
                f"{path.parent.parent} holds a checkpoint of a different config (see its "
                "config.yaml); resume with the same config, or use another --workdir."
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.polyak is not None:
            self.polyak.averaged.load_state_dict(ckpt["polyak"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if ckpt.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in ckpt["cuda_rng"]])
        self.state = TrainState(**ckpt["state"])
        self.run_id = ckpt.get("run_id") or None
        print(f"resuming from {path} at step {self.state.step}")

    def checkpoint(self) -> None:
        self.state.wall_time_s = self.wall_before + time.perf_counter() - self.wall_start
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": asdict(self.state),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "run_id": self.run_id or "",
            "config": self.resolved,
        }
        if self.polyak is not None:
            payload["polyak"] = self.polyak.averaged.state_dict()
        _save_atomic(payload, self.ckpt_dir / "last.pt")
        self.tracker.flush()  # the metrics up to the checkpoint are in the store

    def start_tracking(self) -> None:
        """Write ``config.yaml`` and start the MLflow run (or reopen it when resuming)."""
        cfg, objective = self.cfg, self.objective
        save_config(cfg, self.workdir / "config.yaml")
        self.git_commit, self.git_dirty = git_state()
        tags = {
            "paper": cfg.paper, "experiment": cfg.experiment, "scale": cfg.scale,
            "seed": cfg.seed, "dataset": objective.dataset, "model": cfg.model.name,
            "git_commit": self.git_commit, "git_dirty": self.git_dirty,
            "data_md5": objective.data_md5, "num_params": self.num_params,
            "device": str(self.device),
        }  # fmt: skip
        new_run = self.run_id is None
        params = flatten(cfg.model_dump(mode="json"))
        name = f"{cfg.experiment}/seed{cfg.seed}"
        self.run_id = self.tracker.start(name, tags, params, self.run_id)
        if new_run:
            self.tracker.log_artifact(self.workdir / "config.yaml")

    # --- one step, one validation -------------------------------------------------------------

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step; returns the loss and the gradient norm. With ``train.compile``
        in 'graph' mode every step but the run's first computes its gradient in the compiled
        graph; the first runs eagerly, so data-dependent initialisations (ActNorm) write their
        parameters before the gradient is traced."""
        state, tc, last = self.state, self.tc, self.ckpt_dir / "last.pt"
        batch = self.objective.batch(self.model, state.step)
        if self.compiled_gradient is not None and state.step > 0:
            loss, grads = self.compiled_gradient(batch)
            self.compiled_gradient.assign(grads)
        else:
            loss = eager_gradient(self.loss_fn, self.model, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {state.step}. The last good "
                f"checkpoint ({last}, if any) was kept. Try a lower learning rate "
                "(train.optim.lr), gradient clipping (train.grad_clip) or a warm-up "
                "(train.schedule.warmup_steps)."
            )
        grad_norm = get_total_norm([p.grad for p in self.params if p.grad is not None])
        if not torch.isfinite(grad_norm):
            raise NonFiniteLossError(
                f"non-finite gradient norm at step {state.step} (loss {loss.item():.4g}). The "
                f"last good checkpoint ({last}, if any) was kept; try train.grad_clip or a "
                "lower train.optim.lr."
            )
        if tc.grad_clip is not None:
            clip_grads_with_norm_(self.params, tc.grad_clip, grad_norm, foreach=True)
        self.optimizer_step()
        self.scheduler.step()
        if self.polyak is not None:
            self.polyak.update(self.model)
        state.step += 1
        return loss, grad_norm

    def log_train(self, loss: torch.Tensor, grad_norm: torch.Tensor, elapsed: float) -> None:
        record = self.objective.train_metrics(loss) | {
            "train/lr": float(self.scheduler.get_last_lr()[0]),
            "train/grad_norm": grad_norm.item(),
            "train/samples_per_s": self.tc.log_every * self.objective.batch_size / elapsed,
            "train/wall_time_s": self.wall_before + time.perf_counter() - self.wall_start,
        }
        self.tracker.log_metrics(record, self.state.step)
        key = self.objective.curve[0]
        self.state.history.append({"step": self.state.step, key: record[key]})

    def validate(self) -> dict[str, float]:
        """Validate the evaluated model (the Polyak average, if any); keep it as ``best.pt``
        when the objective's selection metric improves, and count towards early stopping."""
        state, objective, model = self.state, self.objective, self.eval_model
        model.eval()
        val = objective.validate(model)
        self.model.train()
        key = objective.curve[1].removeprefix("val/")
        if not math.isfinite(val[key]):
            raise NonFiniteLossError(
                f"non-finite validation {key} at step {state.step}; the last good checkpoint "
                f"is kept in {self.ckpt_dir}."
            )
        self.tracker.log_metrics({f"val/{k}": v for k, v in val.items()}, state.step)
        state.history.append({"step": state.step, objective.curve[1]: val[key]})
        if objective.select_on is not None:
            score = val[objective.select_on]
            if score < state.best_val:
                state.best_val, state.best_step, state.evals_since_best = score, state.step, 0
                _save_atomic(model.state_dict(), self.ckpt_dir / "best.pt")
            else:
                state.evals_since_best += 1
                patience = self.tc.patience
                state.stopped_early = patience is not None and state.evals_since_best >= patience
        return val

    # --- the end ------------------------------------------------------------------------------

    def finish(self) -> RunSummary:
        """Test the selected model, save the figures and the run summary, end the MLflow run."""
        cfg, objective, state, tracker = self.cfg, self.objective, self.state, self.tracker
        model = self.model
        if objective.select_on is not None:
            kept = self.ckpt_dir / "best.pt"
            model.load_state_dict(torch.load(kept, map_location=self.device, weights_only=True))
            best_step = state.best_step
        else:
            model = self.eval_model
            kept, best_step = self.ckpt_dir / "final.pt", state.step
            _save_atomic(model.state_dict(), kept)
        model.eval()
        final = objective.test(model) | {"train/wall_time_s": state.wall_time_s}
        tracker.log_metrics(final, state.step)
        fig_dir = self.workdir / "figures"
        fig_dir.mkdir(exist_ok=True)
        title = f"{cfg.paper} · {cfg.experiment} · seed {cfg.seed}"
        figures = objective.figures(model, state.history, final, fig_dir, title)
        for record in figures:
            tracker.log_artifact(self.workdir / record.path, "figures")
        tracker.log_artifact(kept, "checkpoints")
        tc = self.tc
        summary = RunSummary(
            run_id=self.run_id, paper=cfg.paper, experiment=cfg.experiment, scale=cfg.scale,
            seed=cfg.seed, dataset=objective.dataset, model=cfg.model.name,
            num_params=self.num_params, data_md5=objective.data_md5,
            git_commit=self.git_commit, git_dirty=self.git_dirty, device=str(self.device),
            threads=cfg.threads,
            budget=Budget(max_steps=tc.max_steps, batch_size=tc.batch_size,
                          eval_every=tc.eval_every, optimizer=tc.optim.name, lr=tc.optim.lr,
                          patience=tc.patience),
            steps=state.step, best_step=best_step, stopped_early=state.stopped_early,
            wall_time_s=state.wall_time_s, metrics=final, figures=figures,
        )  # fmt: skip
        summary.write(self.workdir / "metrics.json")
        tracker.log_artifact(self.workdir / "metrics.json")
        tracker.end("FINISHED")
        return summary


def train(
    cfg: RunBase,
    objective: Objective,
    workdir: str | Path,
    tracker: NullTracker | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> RunSummary | StoppedAt:
    """Train as ``cfg`` and ``objective`` say; return the run summary.

    Resumes from ``workdir/checkpoints/last.pt`` if present. ``stop_after``: checkpoint and
    return :class:`StoppedAt` after this many steps in this call (for preemptible jobs; run the
    same call again to resume).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, objective, workdir, tracker or NullTracker())
    if (run.ckpt_dir / "last.pt").exists():
        run.restore(run.ckpt_dir / "last.pt")
    run.start_tracking()
    state, tc = run.state, run.tc
    run.wall_start, run.wall_before = time.perf_counter(), state.wall_time_s
    window_start, steps_this_call = time.perf_counter(), 0
    bar = tqdm(total=tc.max_steps, initial=state.step, disable=not progress, mininterval=2.0,
               desc=f"{cfg.paper}/{cfg.experiment}/seed{cfg.seed}")  # fmt: skip
    run.model.train()
    try:
        if tc.max_steps == 0 and not state.history:  # fitted in closed form: validate as built
            run.validate()
        while state.step < tc.max_steps and not state.stopped_early:
            loss, grad_norm = run.step()
            steps_this_call += 1
            bar.update(1)
            if state.step % tc.log_every == 0:
                run.log_train(loss, grad_norm, max(time.perf_counter() - window_start, 1e-9))
                window_start = time.perf_counter()
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if state.step % tc.eval_every == 0 or state.step == tc.max_steps:
                val = run.validate()
                if not progress:
                    shown = "  ".join(f"val {k} {v:.4f}" for k, v in val.items())
                    print(f"step {state.step}/{tc.max_steps}  loss {loss.item():.4f}  {shown}",
                          flush=True)  # fmt: skip
            if state.step % tc.checkpoint_every == 0:
                run.checkpoint()
            if stop_after is not None and steps_this_call >= stop_after:
                run.checkpoint()
                bar.close()
                return StoppedAt(state.step)
        bar.close()
        run.checkpoint()
        return run.finish()
    except BaseException as exc:
        bar.close()
        run.tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise

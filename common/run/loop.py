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

Under ``torchrun`` the same loop trains data-parallel: each process takes its shard of every
global batch, DDP averages the gradients, and rank 0 alone logs and writes; a run on W
processes takes the single process's steps (:mod:`common.run.distributed`).
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

from common.data_registry import dataset_path
from common.files import replace_atomically, write_atomic
from common.flows.continuous import CNF
from common.flows.flow import Flow
from common.flows.precision import network_autocast
from common.run.config import ConfigError, RunBase, ScheduleConfig, TrainBase, flatten, save_config
from common.run.distributed import Ranks, loss_rng, process_group
from common.run.objectives import Objective
from common.run.steps import (
    CompiledGradient,
    TotalLoss,
    compile_blocker,
    compile_optimizer_step,
    eager_gradient,
)
from common.run.summary import Budget, Continuation, RunSummary
from common.run.tracking import NullTracker, git_state, lock_hash

__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "StoppedAt",
    "TrainState",
    "lr_factor",
    "request_stop",
    "resolve_device",
    "train",
]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or gradient; the last good checkpoint is kept."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (truncated, or not a checkpoint of this trainer)."""


@dataclass
class TrainState:
    """Everything besides model, optimiser and scheduler needed to resume exactly."""

    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    evals_since_best: int = 0
    stopped_early: bool = False
    wall_time_s: float = 0.0  # training time summed over every (resumed) call
    # continuous flows: function evaluations summed over training, [forward, backward, steps]
    nfe_totals: list[int] = field(default_factory=lambda: [0, 0, 0])
    history: list[dict[str, float]] = field(default_factory=list)
    # continuations with changed settings: {"step": k, "changes": {key: [old, new]}}
    continuations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def warmup_from(self) -> int:
        """The step the learning-rate warm-up counts from: the last continuation's."""
        return self.continuations[-1]["step"] if self.continuations else 0


@dataclass(frozen=True)
class StoppedAt:
    """``train(..., stop_after=N)`` returned after checkpointing at this step; run it again to
    resume."""

    step: int


def make_optimizer(cfg: TrainBase, params, compiled: bool | None = None) -> torch.optim.Optimizer:
    """The configured optimiser. Eager runs use its multi-tensor (``foreach``) form: the same
    arithmetic as the per-tensor loop PyTorch defaults to on CPU, in fewer dispatches (a step
    of a small flow is dominated by them). Compiled runs (``train.compile``) hold the learning
    rate in a tensor, so the compiled update reads the schedule's value instead of
    recompiling for each new one (PyTorch allows a tensor learning rate only there)."""
    o, compiled = cfg.optim, cfg.compile if compiled is None else compiled
    lr = torch.tensor(o.lr) if compiled else o.lr
    common = {"lr": lr, "weight_decay": o.weight_decay, "foreach": not compiled}
    if o.name in ("adam", "adamax"):
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.Adamax
        return cls(params, betas=o.betas, eps=o.eps, **common)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, eps=o.eps, momentum=o.momentum, **common)
    return torch.optim.SGD(params, momentum=o.momentum, **common)


def lr_factor(s: ScheduleConfig, step: int, max_steps: int, since: int = 0) -> float:
    """Multiplier of the base learning rate at ``step``: a linear warm-up over
    ``s.warmup_steps`` steps from step ``since`` (0, or the step a run was continued from with
    changed settings), times the schedule's decay after the first ``s.warmup_steps`` steps:

        factor = min(1, (step − since + 1) / warmup) · decay(max(0, step − warmup)),

    decay(t) = γᵗ ('exponential'), a half cosine from 1 to ``min_lr_ratio`` ('cosine'), 1."""
    ramp = 1.0
    if s.warmup_steps and step - since < s.warmup_steps:
        ramp = (step - since + 1) / s.warmup_steps
    t = max(0, step - s.warmup_steps)
    if t == 0 or s.name == "constant":
        return ramp
    if s.name == "exponential":
        return ramp * s.gamma**t
    progress = t / max(1, max_steps - s.warmup_steps)
    return ramp * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# What a run continued from its last checkpoint may change (``--continue-with-changes``): the
# settings one changes after a divergence or a plateau. The model, the data, the seed and the
# optimiser's kind are fixed: the checkpoint's state only means something under them.
# ``resources`` (processes, memory, time) may change too: a run on W processes takes the steps
# of one process (common.run.distributed), so a run may resume on more or fewer.
CONTINUABLE = (
    "train.optim.lr", "train.optim.weight_decay", "train.grad_clip", "train.schedule.",
    "train.max_steps", "train.patience", "resources.",
)  # fmt: skip


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The flattened keys whose values differ between two resolved configs: key → (old, new)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def _describe(changes: dict[str, Any]) -> str:
    """``key: old -> new; …`` for messages, logs and the MLflow tag."""
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but PyTorch sees no GPU (torch.cuda.is_available() is "
            f"False; this build: torch {torch.__version__}): use --set device=cpu, or "
            "device=auto to take a GPU only where there is one"
        )
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


_stop_signals: list[int] = []  # signals that asked the running loop to stop


def request_stop(signum: int, frame: Any = None) -> None:
    """A signal handler (the command line installs it for SIGTERM): the loop finishes its
    current step, then unwinds as on Ctrl-C, so the MLflow run is marked KILLED. Raising
    inside the handler could interrupt a write to the MLflow store halfway and leave it
    unable to record the run's end."""
    _stop_signals.append(signum)


def _channels_last(batch: Any) -> Any:
    """Every 4-D tensor of a batch (images) in the channels-last memory format."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
    return type(batch)(_channels_last(t) for t in batch)


def _read_run_record(path: Path, tracking_uri: str | None) -> str | None:
    """The MLflow run id ``run.json`` names, if it belongs to ``tracking_uri``'s store."""
    try:
        record = json.loads(path.read_text())
        run_id, uri = record["run_id"], record["tracking_uri"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{path} is not a run record (delete it to start a new MLflow run)"
        ) from None
    return run_id if uri == tracking_uri else None


def _save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` atomically: an interrupted save never corrupts the file already there."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


class _Run:
    """One call of :func:`train`: the state the loop's steps share."""

    def __init__(
        self, cfg: RunBase, objective: Objective, workdir: Path, tracker, ranks: Ranks
    ) -> None:
        self.cfg, self.tc, self.objective, self.ranks = cfg, cfg.train, objective, ranks
        self.tracker = tracker if ranks.is_main else NullTracker()  # rank 0 logs
        self.workdir, self.ckpt_dir = workdir, workdir / "checkpoints"
        self.resolved = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # the same on every rank: the same model, the same draws
        self.device = ranks.device(resolve_device(cfg.device))
        if self.tc.patience is not None and objective.select_on is None:
            raise ConfigError("train.patience needs an objective that selects a best model")
        self.model = objective.build(self.device).to(self.device)
        if self.tc.channels_last:  # 4-D weights (convolutions) in NHWC; batches follow
            self.model = self.model.to(memory_format=torch.channels_last)
        self.network_dtype = torch.bfloat16 if self.tc.precision == "bf16" else None
        if objective.batch_size % ranks.world_size:
            raise ConfigError(
                f"train.batch_size {objective.batch_size} does not split evenly over "
                f"{ranks.world_size} processes: use a multiple of {ranks.world_size}"
            )
        self.num_params = sum(p.numel() for p in self.model.parameters())
        # what common.run.load needs to rebuild this model without the dataset
        spec = {"objective": type(objective).__name__, **objective.model_spec()}
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if ranks.is_main:
            write_atomic(self.ckpt_dir / "model.json", json.dumps(spec, indent=1))
        self.compile_blocker = compile_blocker() if self.tc.compile else None
        if self.compile_blocker:
            print(f"note: train.compile is on, but {self.compile_blocker}: training eagerly "
                  "(the same arithmetic up to rounding, slower steps)", flush=True)  # fmt: skip
        compiled = self.tc.compile and self.compile_blocker is None
        self.optimizer = make_optimizer(self.tc, self.model.parameters(), compiled)
        self.state = TrainState()
        self.continued_at: int | None = None  # the step this call continued from, if it did
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                self.tc.schedule, step, self.tc.max_steps, since=self.state.warmup_from
            ),
        )
        self.polyak = Polyak(self.model, self.tc.polyak_decay) if self.tc.polyak_decay else None
        self.run_id: str | None = None
        self.params = list(self.model.parameters())
        # continuous flows: their function evaluations per step, forward and backward, are
        # summed between logs and logged as means (train/nfe_forward, train/nfe_backward)
        self.cnfs = [m for m in self.model.modules() if isinstance(m, CNF)]
        self.nfe_sums = [0, 0, 0]  # forward, backward, steps
        loss, mode = objective.loss, self.tc.compile_mode
        single = not ranks.distributed
        self.compiled_gradient = (
            CompiledGradient(self.model, loss) if compiled and mode == "graph" and single else None
        )
        # static shapes: every training batch has the same shape (drop-last); in 'loss' mode a
        # data-dependent init (ActNorm) recompiles once
        compile_loss = compiled and mode == "loss" and single
        self.loss_fn = torch.compile(loss, dynamic=False) if compile_loss else loss
        self.optimizer_step = (
            compile_optimizer_step(self.optimizer) if compiled else self.optimizer.step
        )
        # data-parallel: DDP's gradient hooks need the loss computed in a module's forward.
        # Compiled, the DDP module is compiled as a whole (PyTorch's recipe: its optimiser
        # splits the graph at gradient buckets), whatever compile_mode says.
        self.ddp = None
        if not single:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(TotalLoss(self.model, loss), device_ids=ids)
            if compiled:
                self.ddp = torch.compile(self.ddp, dynamic=False)

    @property
    def eval_model(self) -> Flow:
        return self.model if self.polyak is None else self.polyak.model

    # --- checkpoints ------------------------------------------------------------------------

    def restore(self, path: Path, allow_changes: bool = False) -> None:
        """Restore model, optimiser, scheduler, Polyak average and RNG streams; refuse a
        checkpoint written by a different config, unless ``allow_changes`` and the changes
        are among :data:`CONTINUABLE` (see :meth:`continue_with`)."""
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # then the devices
        except Exception as exc:  # truncated zip, not a torch file, a forbidden global
            raise CheckpointError(
                f"{path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
                f"Move it aside to restart the run from step 0 (the run's other files are "
                f"kept), or restore a good copy."
            ) from None
        changes = {}
        if ckpt.get("config") != self.resolved:
            changes = config_changes(
                json.loads(ckpt.get("config") or "{}"), json.loads(self.resolved)
            )
            fixed = [k for k in changes if not k.startswith(CONTINUABLE)]
            if not allow_changes or fixed:
                hint = (
                    f"{', '.join(fixed)} cannot change in a continued run (only "
                    f"{', '.join(CONTINUABLE)} can); use another --workdir."
                    if fixed
                    else "resume with the same config, continue from the checkpoint with "
                    "these changes (--continue-with-changes), or use another --workdir."
                )
                raise ConfigError(
                    f"{path.parent.parent} holds a checkpoint of a different config "
                    f"({_describe(changes)}); " + hint
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
        if changes:
            self.continue_with(changes)
        if self.ranks.is_main:  # one line, however many processes
            print(f"resuming from {path} at step {self.state.step}")

    def continue_with(self, changes: dict[str, tuple[Any, Any]]) -> None:
        """Apply changed optimisation settings to the restored state: the optimiser's base
        learning rate and weight decay, and the learning rate of the step about to run (a
        warm-up, if configured, restarts here). Recorded in the state (and so in
        ``metrics.json`` and an MLflow tag) as a continuation at this step."""
        step, o = self.state.step, self.tc.optim
        self.continued_at = step
        self.state.continuations.append(
            {"step": step, "changes": {k: list(v) for k, v in changes.items()}}
        )
        self.state.stopped_early = False  # a new patience or budget may let it go on
        self.scheduler.base_lrs = [o.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["weight_decay"] = o.lr, o.weight_decay
            lr = o.lr * lr_factor(self.tc.schedule, step, self.tc.max_steps, since=step)
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # compiled runs read the tensor in place
            else:
                group["lr"] = lr
        if self.ranks.is_main:
            print(f"continuing at step {step} with changed settings: {_describe(changes)}")

    def checkpoint(self) -> None:
        self.state.wall_time_s = self.wall_before + time.perf_counter() - self.wall_start
        if not self.ranks.is_main:  # every rank holds the same state: rank 0 writes it
            return
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
        """Write ``config.yaml`` and start the MLflow run, or reopen the workdir's run: the
        one its checkpoint names, else the one ``run.json`` names (written when the run
        starts, so a job killed before its first checkpoint is reopened, not duplicated)."""
        cfg, objective = self.cfg, self.objective
        record = self.workdir / "run.json"
        if self.run_id is None and record.exists():
            self.run_id = _read_run_record(record, self.tracker.tracking_uri)
        save_config(cfg, self.workdir / "config.yaml")
        self.git_commit, self.git_dirty = git_state()
        tags = {
            "paper": cfg.paper, "experiment": cfg.experiment, "scale": cfg.scale,
            "seed": cfg.seed, "dataset": objective.dataset, "model": cfg.model.name,
            "git_commit": self.git_commit, "git_dirty": self.git_dirty,
            "requirements_lock_sha256": lock_hash(),
            "data_md5": objective.data_md5, "num_params": self.num_params,
            "device": str(self.device), "processes": self.ranks.world_size,
            "compiled": self.tc.compile and not self.compile_blocker,
        }  # fmt: skip
        # MLflow's own fields, so that its UI fills the Source and Version columns
        tags |= {"mlflow.source.name": f"papers/{cfg.paper}/train.py",
                 "mlflow.source.git.commit": self.git_commit}  # fmt: skip
        params = flatten(cfg.model_dump(mode="json"))
        # readable and unique: what ran, at which scale, and when it started
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        name = f"{cfg.paper}/{cfg.experiment}/seed{cfg.seed} · {cfg.scale} · {started}"
        run_id = self.tracker.start(name, tags, params, self.run_id)
        if self.continued_at is not None:  # in this call
            changes = self.state.continuations[-1]["changes"]  # MLflow params are immutable
            self.tracker.set_tags({f"continued_at_step_{self.continued_at}": _describe(changes)})
            self.tracker.log_all_after(self.continued_at)  # what follows is not a replay
        if run_id is not None and run_id != self.run_id:  # a new run
            record_text = {"run_id": run_id, "tracking_uri": self.tracker.tracking_uri}
            write_atomic(record, json.dumps(record_text, indent=2) + "\n")
            self.tracker.log_artifact(self.workdir / "config.yaml")
            if (data := getattr(objective, "data", None)) is not None:  # not a target's fit
                splits = {s: len(getattr(data, f"x_{s}")) for s in ("train", "val", "test")}
                source = dataset_path(cfg.data.name, cfg.data.root).as_posix()
                self.tracker.log_dataset(objective.dataset, data.md5, source, splits)
        self.run_id = run_id

    # --- one step, one validation -------------------------------------------------------------

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step; returns the loss and the gradient norm. With ``train.compile``
        in 'graph' mode every step but the run's first computes its gradient in the compiled
        graph; the first runs eagerly, so data-dependent initialisations (ActNorm) write their
        parameters before the gradient is traced."""
        state, tc, last = self.state, self.tc, self.ckpt_dir / "last.pt"
        batch = self.objective.batch(self.model, state.step)  # the global batch, every rank
        if tc.channels_last:
            batch = _channels_last(batch)
        evaluations = sum(c.evaluations for c in self.cnfs)
        with network_autocast(self.network_dtype):  # train.precision: bf16 networks
            if self.ddp is not None:  # this rank's shard; DDP averages the gradients
                ranks = self.ranks
                batch = self.objective.shard(batch, ranks.rank, ranks.world_size)
                with loss_rng(ranks, self.cfg.seed, state.step, self.device):
                    total, loss = self.ddp(batch)
                    self.model.zero_grad(set_to_none=True)
                    total.backward()
                loss = ranks.mean(loss)  # the global batch's loss: logged, and checked alike
            elif self.compiled_gradient is not None and state.step > 0:
                loss, grads = self.compiled_gradient(batch)
                self.compiled_gradient.assign(grads)
            else:
                loss = eager_gradient(self.loss_fn, self.model, batch)
        if self.cnfs:  # the last solve of each block was this step's forward pass
            forward = sum(c.last_nfe for c in self.cnfs)
            total = sum(c.evaluations for c in self.cnfs) - evaluations
            step_nfe = (forward, total - forward, 1)
            self.nfe_sums = [a + b for a, b in zip(self.nfe_sums, step_nfe, strict=True)]
            state.nfe_totals = [a + b for a, b in zip(state.nfe_totals, step_nfe, strict=True)]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {state.step}. The last good "
                f"checkpoint ({last}, if any) was kept: continue from it with a lower learning "
                "rate (--set train.optim.lr=...), gradient clipping (train.grad_clip) or a "
                "warm-up (train.schedule.warmup_steps), adding --continue-with-changes to the "
                "same command; or start afresh in another --workdir."
            )
        grad_norm = get_total_norm([p.grad for p in self.params if p.grad is not None])
        if not torch.isfinite(grad_norm):
            raise NonFiniteLossError(
                f"non-finite gradient norm at step {state.step} (loss {loss.item():.4g}). The "
                f"last good checkpoint ({last}, if any) was kept: continue from it with "
                "--set train.grad_clip=... or a lower train.optim.lr, adding "
                "--continue-with-changes to the same command."
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
        if self.cnfs and self.nfe_sums[2]:
            forward, backward, steps = self.nfe_sums
            record |= {"train/nfe_forward": forward / steps, "train/nfe_backward": backward / steps}
            self.nfe_sums = [0, 0, 0]
        if self.device.type == "cuda":  # this process's peak so far
            record["train/gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
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
                if self.ranks.is_main:
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
        final = objective.test(model)
        if bad := sorted(k for k, v in final.items() if not math.isfinite(v)):
            raise NonFiniteLossError(
                f"non-finite test metrics ({', '.join(bad)}) of the model kept at step "
                f"{best_step}, on the test split of {objective.dataset}: the model is finite on "
                "the validation split, so look for bad values in the test data or inputs "
                "outside the model's domain"
            )
        final |= {"train/wall_time_s": state.wall_time_s}
        if self.device.type == "cuda":
            final["train/gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if self.cnfs and state.nfe_totals[2]:  # means over every training step
            forward, backward, steps = state.nfe_totals
            final |= {"train/nfe_forward_mean": forward / steps,
                      "train/nfe_backward_mean": backward / steps}  # fmt: skip
        tracker.log_metrics(final, state.step)
        fig_dir = self.workdir / "figures"
        fig_dir.mkdir(exist_ok=True)
        title = f"{cfg.paper} · {cfg.experiment} · seed {cfg.seed}"
        figures = objective.figures(model, state.history, final, fig_dir, title)
        for record in figures:
            tracker.log_artifact(self.workdir / record.path, "figures")
        tracker.log_artifact(kept, "checkpoints")
        tracker.log_artifact(self.ckpt_dir / "model.json", "checkpoints")  # for load_flow
        tc = self.tc
        summary = RunSummary(
            run_id=self.run_id, paper=cfg.paper, experiment=cfg.experiment, scale=cfg.scale,
            seed=cfg.seed, dataset=objective.dataset, model=cfg.model.name,
            num_params=self.num_params, data_md5=objective.data_md5,
            git_commit=self.git_commit, git_dirty=self.git_dirty, device=str(self.device),
            threads=cfg.threads, processes=self.ranks.world_size,
            budget=Budget(max_steps=tc.max_steps, batch_size=tc.batch_size,
                          eval_every=tc.eval_every, optimizer=tc.optim.name, lr=tc.optim.lr,
                          patience=tc.patience),
            steps=state.step, best_step=best_step, stopped_early=state.stopped_early,
            wall_time_s=state.wall_time_s, metrics=final, figures=figures,
            continuations=[Continuation(**c) for c in state.continuations],
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
    continue_with_changes: bool = False,
) -> RunSummary | StoppedAt | None:
    """Train as ``cfg`` and ``objective`` say; return the run summary.

    Resumes from ``workdir/checkpoints/last.pt`` if present, which must have been written
    under the same config; with ``continue_with_changes`` the config may differ from it in the
    optimisation settings of :data:`CONTINUABLE` (a lower learning rate after a divergence),
    and the run goes on from the checkpoint under them, the change recorded. ``stop_after``:
    checkpoint and return :class:`StoppedAt` after this many steps in this call (for
    preemptible jobs; run the same call again to resume).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; they train
    data-parallel (:mod:`common.run.distributed`), and ranks other than 0 return None where
    rank 0 tests the model and returns the summary.
    """
    workdir = Path(workdir)
    _stop_signals.clear()
    if continue_with_changes and not (workdir / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"nothing to continue: {workdir} has no checkpoints/last.pt")
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"the workdir {workdir} is a file; give a folder (--workdir)")
    workdir.mkdir(parents=True, exist_ok=True)
    with process_group(resolve_device(cfg.device)) as ranks:
        return _train(cfg, objective, workdir, tracker, stop_after, progress,
                      continue_with_changes, ranks)  # fmt: skip


def _train(cfg, objective, workdir, tracker, stop_after, progress, continue_with_changes,
           ranks: Ranks) -> RunSummary | StoppedAt | None:  # fmt: skip
    run = _Run(cfg, objective, workdir, tracker or NullTracker(), ranks)
    if ranks.world_size != cfg.resources.processes and ranks.is_main:
        print(f"note: training on {ranks.world_size} process(es) where the config's "
              f"resources.processes says {cfg.resources.processes} (the pipeline starts it "
              "with torchrun); the steps are the same, only the time differs",
              flush=True)  # fmt: skip
    if (run.ckpt_dir / "last.pt").exists():
        run.restore(run.ckpt_dir / "last.pt", allow_changes=continue_with_changes)
    state, tc = run.state, run.tc
    run.wall_start, run.wall_before = time.perf_counter(), state.wall_time_s
    window_start, steps_this_call = time.perf_counter(), 0
    progress = progress and ranks.is_main
    bar = tqdm(total=tc.max_steps, initial=state.step, disable=not progress, mininterval=2.0,
               desc=f"{cfg.paper}/{cfg.experiment}/seed{cfg.seed}")  # fmt: skip
    run.model.train()
    try:
        if ranks.is_main:  # the config, the run record and the MLflow run
            run.start_tracking()
        if tc.max_steps == 0 and not state.history:  # fitted in closed form: validate as built
            run.validate()
        while state.step < tc.max_steps and not state.stopped_early:
            if ranks.any(bool(_stop_signals), run.device):  # every rank stops at one step
                where = f"signal {_stop_signals[0]}" if _stop_signals else "a stop on another rank"
                raise KeyboardInterrupt(f"{where} at step {state.step}")
            loss, grad_norm = run.step()
            steps_this_call += 1
            bar.update(1)
            if state.step % tc.log_every == 0:
                run.log_train(loss, grad_norm, max(time.perf_counter() - window_start, 1e-9))
                window_start = time.perf_counter()
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if state.step % tc.eval_every == 0 or state.step == tc.max_steps:
                val = run.validate()
                if not progress and ranks.is_main:
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
        return run.finish() if ranks.is_main else None
    except BaseException as exc:
        bar.close()
        run.tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise

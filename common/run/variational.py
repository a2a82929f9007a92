"""Reverse-KL ("variational") training of a flow towards an unnormalised target density, and
its evaluation (Rezende et al., "Normalizing Flows on Tori and Spheres", ICML 2020, Sec. 5).

The target is known up to its normaliser: p(x) = p̃(x)/Z. The flow q is trained on its own
reparametrised samples, minimising

    L = E_q[log q(x) − log p̃(x)] = KL(q ‖ p) − log Z,

so no data are needed. Evaluation on N samples x_i ~ q with importance weights
w_i = p̃(x_i)/q(x_i), as the paper does:

    Ẑ = (1/N) Σ w_i,    KL ≈ (1/N) Σ log(q/p̃)(x_i) + log Ẑ,    ESS = (Σ w)² / (N Σ w²),

and, where the target's log Z is known in closed form, the exact KL = (1/N) Σ log(q/p̃) +
log Z (an unbiased estimate of KL(q ‖ p), never below 0 in expectation; the importance-sampled
KL is biased low). The density of the trained flow is also integrated by quadrature over the
whole manifold (``test/quadrature_mass``, 1 for a correct log-determinant).

Determinism and resume work as in :mod:`common.run.training`: every random draw of training comes
from the global torch RNG, whose state is checkpointed; evaluations run under a forked RNG
with a fixed seed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from common.flows.flow import Flow
from common.flows.manifolds import sphere_grid, torus_grid
from common.run.config import VariationalRunConfig
from common.run.plotting import save_curves, save_sphere_density, save_torus_density
from common.run.tracking import NullTracker, write_metrics_json
from common.run.training import (
    NonFiniteLossError,
    TrainState,
    load_checkpoint,
    lr_factor,
    make_optimizer,
    resolve_device,
    save_checkpoint,
    start_run,
)

__all__ = ["Target", "density_on_grid", "kl_metrics", "train_reverse_kl"]

EVAL_SEED = 1234


class Target(Protocol):
    """An unnormalised density p̃ on a manifold: ``log_unnormalized(x)`` ``(B,)`` for points
    ``(B, D)`` (angles on the torus, unit vectors on the sphere); ``log_z`` the exact log
    normaliser w.r.t. the manifold's measure, or None."""

    name: str
    manifold: Literal["torus", "sphere"]
    dim: int  # D of Tᴰ or Sᴰ
    log_z: float | None

    def log_unnormalized(self, x: Tensor) -> Tensor: ...


@torch.no_grad()
def kl_metrics(model: Flow, target: Target, n: int, batch_size: int = 5000) -> dict[str, float]:
    """KL (importance-sampled, and exact where log Z is known), ESS (%) and log Ẑ from ``n``
    samples of ``model``."""
    log_w = []
    for chunk in range(0, n, batch_size):
        x, log_q = model.sample_with_log_prob(min(batch_size, n - chunk))
        log_w.append(target.log_unnormalized(x) - log_q)
    log_w = torch.cat(log_w).double()
    log_z_hat = (torch.logsumexp(log_w, 0) - math.log(n)).item()
    out = {
        "kl": -log_w.mean().item() + log_z_hat,
        "ess": 100 * math.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / n,
        "log_z_estimate": log_z_hat,
    }
    if target.log_z is not None:
        out["kl_exact"] = -log_w.mean().item() + target.log_z
    return out


@torch.no_grad()
def density_on_grid(
    log_density: Callable[[Tensor], Tensor], manifold: str, n: int, batch_size: int = 20000
) -> tuple[Tensor, float, dict[str, Tensor]]:
    """log density at the midpoint grid of ``manifold`` (n nodes per coordinate; see
    :func:`common.flows.manifolds.torus_grid` / ``sphere_grid``), reshaped ``(n, n)``, the
    quadrature of its exponential (the mass), and the grid's coordinates."""
    points, cell, coords = torus_grid(n) if manifold == "torus" else sphere_grid(n)
    values = torch.cat([log_density(chunk) for chunk in points.split(batch_size)])
    mass = (torch.logsumexp(values.double(), 0).exp() * cell).item()
    return values.reshape(n, n), mass, coords


def _monitor(model: Flow, target: Target, n: int) -> dict[str, float]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        return kl_metrics(model, target, n)


def train_reverse_kl(
    cfg: VariationalRunConfig,
    build_model: Callable[[Any, Target], Flow],
    workdir: str | Path,
    tracker: NullTracker | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    *,
    build_target: Callable[[Any], Target],
) -> dict[str, Any]:
    """Fit ``build_model(cfg.model, target)`` to ``build_target(cfg.target)`` by reverse KL;
    return the final metrics (also written to ``workdir/metrics.json`` and MLflow).

    Resumes from ``workdir/checkpoints/last.pt`` if present; ``stop_after`` checkpoints and
    returns after that many steps in this call. The final model is evaluated (the paper reports
    the model at the end of training; there is no validation set to select on).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tracker = tracker or NullTracker()
    resolved = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    target = build_target(cfg.target)
    model = build_model(cfg.model, target).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    tc = cfg.train
    optimizer = make_optimizer(tc, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(tc.schedule, step, tc.max_steps)
    )
    state = TrainState()
    last_ckpt = workdir / "checkpoints" / "last.pt"
    run_id = None
    if last_ckpt.exists():
        state, run_id, _ = load_checkpoint(last_ckpt, resolved, model, optimizer, scheduler)
    run_id = start_run(
        cfg, tracker, workdir, run_id, dataset=target.name, data_md5="analytic target",
        num_params=num_params, device=device,
    )  # fmt: skip
    extra = {"run_id": run_id or "", "config": resolved}
    log_z = target.log_z if target.log_z is not None else 0.0

    def checkpoint() -> None:
        state.wall_time_s = wall_before + time.perf_counter() - wall_start
        save_checkpoint(last_ckpt, model, optimizer, scheduler, state, extra)

    def reverse_kl(z: Tensor) -> Tensor:  # E_q[log q − log p̃] = KL(q ‖ p) − log Z
        x, log_q = model.from_base(z)
        return (log_q - target.log_unnormalized(x)).mean()

    # Only the deterministic part is compiled: the base draw stays in eager mode, so the random
    # stream (and hence resuming) is the same with and without compilation.
    loss_fn = torch.compile(reverse_kl) if tc.compile else reverse_kl
    model.train()
    steps_this_call, window_start = 0, time.perf_counter()
    wall_start, wall_before = time.perf_counter(), state.wall_time_s
    bar = tqdm(total=tc.max_steps, initial=state.step, disable=not progress, mininterval=2.0,
               desc=f"{cfg.paper}/{cfg.experiment}/seed{cfg.seed}")  # fmt: skip
    try:
        while state.step < tc.max_steps:
            loss = loss_fn(model.base.sample(tc.batch_size))
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite reverse-KL loss ({loss.item()}) at step {state.step}. The "
                    f"last good checkpoint ({last_ckpt}, if any) was kept. Try a lower "
                    "train.optim.lr or train.grad_clip."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = tc.grad_clip if tc.grad_clip is not None else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if not torch.isfinite(grad_norm):
                raise NonFiniteLossError(
                    f"non-finite gradient norm at step {state.step} (loss {loss.item():.4g}); "
                    f"the last good checkpoint ({last_ckpt}, if any) was kept."
                )
            optimizer.step()
            scheduler.step()
            state.step += 1
            steps_this_call += 1
            bar.update(1)

            if state.step % tc.log_every == 0:
                elapsed = time.perf_counter() - window_start
                record = {
                    "train/loss": loss.item(),
                    "train/kl": loss.item() + log_z,
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/grad_norm": grad_norm.item(),
                    "train/samples_per_s": tc.log_every * tc.batch_size / max(elapsed, 1e-9),
                    "train/wall_time_s": wall_before + time.perf_counter() - wall_start,
                }
                tracker.log_metrics(record, state.step)
                state.history.append({"step": state.step, "train/kl": record["train/kl"]})
                window_start = time.perf_counter()
                bar.set_postfix(kl=f"{record['train/kl']:.3f}")

            if state.step % tc.eval_every == 0 or state.step == tc.max_steps:
                val = _monitor(model, target, tc.monitor_samples)
                tracker.log_metrics({f"val/{k}": v for k, v in val.items()}, state.step)
                state.history.append({"step": state.step, "val/kl": val["kl"]})
                if not progress:
                    print(f"step {state.step}/{tc.max_steps}  KL {val['kl']:.4f}  "
                          f"ESS {val['ess']:.1f} %", flush=True)  # fmt: skip

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

    model.eval()
    test = _monitor(model, target, tc.eval_samples)
    final = {f"test/{k}": v for k, v in test.items()}
    model_logq, mass, coords = density_on_grid(model.log_prob, target.manifold, tc.grid_size)
    target_logp, target_mass, _ = density_on_grid(
        lambda x: target.log_unnormalized(x) - log_z, target.manifold, tc.grid_size
    )
    final["test/quadrature_mass"] = mass
    final["train/wall_time_s"] = state.wall_time_s
    tracker.log_metrics(final, state.step)

    fig_dir = workdir / "figures"
    fig_dir.mkdir(exist_ok=True)
    title = f"{cfg.paper} · {cfg.experiment} · seed {cfg.seed}"
    saver = save_torus_density if target.manifold == "torus" else save_sphere_density
    paths = [
        save_curves(state.history, fig_dir / "curves.png", title, ("train/kl", "val/kl"),
                    "KL(q ‖ p) (nats)"),
        saver(target_logp, model_logq, coords, fig_dir / "density.png",
              f"{title}\nKL {test['kl']:.3f} nats · ESS {test['ess']:.1f} %"),
    ]  # fmt: skip
    for path in paths:
        tracker.log_artifact(path, "figures")
    torch.save(model.state_dict(), workdir / "checkpoints" / "final.pt")
    tracker.log_artifact(workdir / "checkpoints" / "final.pt", "checkpoints")
    payload = {
        "run_id": run_id,
        "paper": cfg.paper,
        "experiment": cfg.experiment,
        "scale": cfg.scale,
        "seed": cfg.seed,
        "dataset": target.name,
        "model": cfg.model.name,
        "num_params": num_params,
        "steps": state.step,
        "best_step": state.step,
        "stopped_early": False,
        "device": str(device),
        "wall_time_s": state.wall_time_s,
        "target_quadrature_mass": target_mass,
        "metrics": final,
    }
    write_metrics_json(workdir / "metrics.json", payload)
    tracker.log_artifact(workdir / "metrics.json")
    tracker.end("FINISHED")
    return payload

"""What the training loop optimises: one :class:`Objective` per kind of problem.

The loop (:mod:`common.run.loop`) owns everything every run shares: seeding, the optimiser
and schedule, Polyak averaging, resuming, checkpoints, NaN guards, logging cadence,
validation cadence and early stopping, the run summary and the MLflow run's end state. An
objective says what is specific to its problem:

- :meth:`~Objective.build`: the problem (a dataset, a target) and the model;
- :meth:`~Objective.batch`: a step's input, with every random draw of the step (batch order,
  flips, dequantization noise, base samples), in eager mode;
- :meth:`~Objective.shard`: a rank's part of that input in a data-parallel run;
- :meth:`~Objective.loss`: the deterministic loss of that input (what ``train.compile``
  compiles with its gradient, so the random stream is the same compiled or not);
- :meth:`~Objective.validate` / :meth:`~Objective.test`: evaluation under a forked RNG with a
  fixed seed; ``select_on`` names the validation metric that picks the tested model (lower is
  better), or is None when the final model is tested;
- :meth:`~Objective.figures`: what a person looks at afterwards.

Objectives here: :class:`MaximumLikelihood` on data (NICE, RealNVP, Glow, MAF),
:class:`VariationalAutoencoder` by the ELBO (IAF's VAEs) and :class:`ReverseKL` to an
unnormalised density (Tori & Spheres; any :class:`Target`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from common.data import Dataset, load_dataset
from common.flows.bijector import exact_ldj
from common.flows.dequantize import bits_per_dim
from common.flows.flow import Flow
from common.flows.image import BatchNorm, set_batch_norm_statistics
from common.run.config import ConfigError, RunConfig, VariationalRunConfig
from common.run.summary import FigureRecord
from common.run.targets import Target, density_on_grid

__all__ = [
    "EVAL_SEED",
    "MaximumLikelihood",
    "Objective",
    "ReverseKL",
    "VariationalAutoencoder",
    "batch_indices",
    "eval_rng",
    "evaluate_nll",
    "kl_metrics",
    "random_shift",
    "to_device",
]


def _plotting():
    """The figure code, imported when a run draws its figures (at its end): matplotlib takes
    a third of a second to import, paid by every job, the short smoke ones included."""
    from common.run import plotting

    return plotting


def to_device(batch: Tensor, device: torch.device) -> Tensor:
    """A batch gathered from the in-memory dataset, on ``device``. To a GPU it goes through
    pinned (page-locked) host memory, asynchronously: PyTorch's caching host allocator reuses
    the pinned blocks, and the copy overlaps with the work already queued on the GPU."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)


EVAL_SEED = 1234  # the random draws of every evaluation: the same for every evaluation


@contextmanager
def eval_rng(device: torch.device, seed: int = EVAL_SEED) -> Iterator[None]:
    """Run the block on a forked RNG seeded with ``seed`` (CPU and, on a GPU, its device), so
    evaluations draw the same numbers every time and never disturb training's stream."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class Objective:
    """Base class; see the module docstring. ``curve`` = (train metric, validation metric)
    drawn against steps, ``curve_label`` their unit."""

    curve: tuple[str, str]
    curve_label: str
    select_on: str | None = None
    dataset: str  # what the run is fitted to: a dataset or a target
    data_md5: str

    def __init__(self, cfg: Any, build_model: Callable[[Any, Any], Flow]) -> None:
        self.cfg, self.build_model = cfg, build_model
        self.device = torch.device("cpu")

    def build(self, device: torch.device) -> Flow:
        raise NotImplementedError

    def model_spec(self) -> dict[str, Any]:
        """What rebuilding the built model needs besides the config (after :meth:`build`),
        saved beside the checkpoints for :func:`common.run.load.load_flow`: none by default
        (a variational fit builds from its target, named in the config)."""
        return {}

    def batch(self, model: Flow, step: int) -> Any:
        raise NotImplementedError

    def loss(self, model: Flow, batch: Any) -> Tensor:
        raise NotImplementedError

    def shard(self, batch: Any, rank: int, world_size: int) -> Any:
        """Rank ``rank``'s part of a step's input in a data-parallel run of ``world_size``
        processes (:mod:`common.run.distributed`): examples [r·B/W, (r+1)·B/W) of the global
        batch of B. By default every tensor of the batch (a tensor, or a tuple of them) has
        the examples along its first dimension."""
        if isinstance(batch, Tensor):
            return batch.chunk(world_size)[rank]
        return type(batch)(t.chunk(world_size)[rank] for t in batch)

    def train_metrics(self, loss: Tensor) -> dict[str, float]:
        raise NotImplementedError

    def validate(self, model: Flow) -> dict[str, float]:
        raise NotImplementedError

    def test(self, model: Flow) -> dict[str, float]:
        raise NotImplementedError

    def figures(
        self, model: Flow, history: list[dict[str, float]], test: dict[str, float],
        fig_dir: Path, title: str,
    ) -> list[FigureRecord]:  # fmt: skip
        """Save the run's figures under ``fig_dir``; ``test`` are the final metrics."""
        raise NotImplementedError

    def _curves(self, history, fig_dir: Path, title: str) -> FigureRecord:
        path = _plotting().save_curves(
            history, fig_dir / "curves.png", title, self.curve, self.curve_label
        )
        return FigureRecord(kind="curves", path=f"figures/{path.name}")


# --- maximum likelihood -----------------------------------------------------------------------


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Indices of the training batch at ``step``: a fresh permutation per epoch drawn from a
    generator seeded by (seed, epoch) — reproducible, resumable at any step, drop-last."""
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)[k * batch_size : (k + 1) * batch_size]


@torch.no_grad()
def evaluate_nll(
    model: Flow, x: Tensor, batch_size: int, device: torch.device, context: Tensor | None = None
) -> dict[str, float]:
    """Mean NLL (nats/example) of ``x``, its bits/dim, and the NLL of the dequantized data on
    its continuous scale (NICE's unit). Dequantization noise is drawn from a fixed seed. With
    ``context`` ``(N, C)`` (one row per example), the NLL is −log p(x | context)."""
    was_training = model.training
    model.eval()
    total = cont = 0.0
    contexts = context.split(batch_size) if context is not None else [None] * len(x)
    with eval_rng(device):
        for chunk, c in zip(x.split(batch_size), contexts, strict=False):
            parts = model.log_prob_parts(chunk.to(device), None if c is None else c.to(device))
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


def random_shift(x: Tensor, max_shift: int) -> Tensor:
    """Translate each image of ``x`` ``(B, C, H, W)`` by its own offset (dy, dx), each uniform
    on {−max_shift, …, max_shift}, repeating the edge pixels into the gap: the Glow authors'
    CIFAR-10 augmentation (Keras ``width_shift_range=height_shift_range=0.1``, fill
    'nearest'), with whole-pixel offsets where Keras interpolates fractional ones and floors.
    Draws from the global RNG; returns ``x``'s dtype (levels stay levels)."""
    n = max_shift
    B, _, H, W = x.shape
    padded = torch.nn.functional.pad(x.float(), (n, n, n, n), mode="replicate")
    dy, dx = torch.randint(-n, n + 1, (2, B), device=x.device)
    rows = torch.arange(H, device=x.device) + n - dy[:, None]  # (B, H): row i shows i − dy
    cols = torch.arange(W, device=x.device) + n - dx[:, None]  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None]
    shifted = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return shifted.permute(0, 3, 1, 2).to(x.dtype)


def sample_figure_name(temperature: float) -> str:
    """``samples.png`` at T = 1 (what every image run draws), ``samples_T0.7.png`` otherwise."""
    return "samples.png" if temperature == 1.0 else f"samples_T{temperature:g}.png"


class MaximumLikelihood(Objective):
    """Maximum likelihood on a dataset: loss = mean NLL in nats per example; validation NLL
    picks the best model, which is tested. A step's input is the dequantized batch: batch
    order from (seed, epoch), random horizontal flips (``train.hflip``, RealNVP Sec. 4.1),
    random translations (``train.random_shift``, the Glow authors' code), then the
    dequantization noise, all from the run's seeded stream.

    With ``data.conditional`` the model is conditioned on each example's one-hot class label
    (MAF's class-conditional models, Sec. 4.3): every score is −log p(x | y) with the true
    label, the batch carries the labels of its examples, and the samples are drawn per class."""

    curve = ("train/nll", "val/nll")
    curve_label = "NLL (nats / example)"
    select_on = "nll"

    def __init__(self, cfg: RunConfig, build_model: Callable[[Any, Dataset], Flow]) -> None:
        super().__init__(cfg, build_model)
        self.data: Dataset | None = None

    def build(self, device: torch.device) -> Flow:
        cfg, self.device = self.cfg, device
        self.data = data = load_dataset(cfg.data.name, cfg.data.root)
        for key in ("hflip", "random_shift"):
            if getattr(cfg.train, key) and not data.is_image:
                raise ConfigError(f"train.{key} needs image data; {cfg.data.name!r} is not")
        self.dataset, self.data_md5 = cfg.data.name, data.md5
        self.batch_size = min(cfg.train.batch_size, len(data.x_train))
        if cfg.data.conditional:
            if data.num_classes is None:
                raise ConfigError(f"data.conditional needs class labels; {cfg.data.name!r} has "
                                  "none")  # fmt: skip
            data.context_features = data.num_classes
        model = self.build_model(cfg.model, data)
        takes = any(getattr(m, "context_features", 0) for m in model.modules())
        if cfg.data.conditional and not takes:
            raise ConfigError(f"data.conditional: model {cfg.model.name!r} takes no context "
                              "(a class-conditional model needs one, e.g. maf)")  # fmt: skip
        if cfg.train.batch_norm_stats == "training_set" and not any(
            isinstance(m, BatchNorm) for m in model.modules()
        ):
            raise ConfigError("train.batch_norm_stats: 'training_set' needs a model with batch "
                              "norm layers; this one has none")  # fmt: skip
        return model

    def model_spec(self) -> dict[str, Any]:
        """The data's shape and kind (no values): enough to build the model without the
        dataset (:func:`common.run.load.stand_in_dataset`)."""
        data = self.data
        return {"data": {
            "name": data.name, "event_shape": list(data.event_shape),
            "num_levels": data.num_levels, "num_classes": data.num_classes,
            "context_features": data.context_features,
            "dtype": str(data.x_train.dtype).removeprefix("torch."),
        }}  # fmt: skip

    def context(self, split: str, index: Tensor | None = None) -> Tensor | None:
        """The one-hot labels ``(N, num_classes)`` of ``split`` (rows ``index``) for a
        conditional experiment; None otherwise."""
        if not self.cfg.data.conditional:
            return None
        y = getattr(self.data, f"y_{split}")
        y = y if index is None else y[index]
        return torch.nn.functional.one_hot(y, self.data.num_classes).float().to(self.device)

    def batch(self, model: Flow, step: int) -> tuple[Tensor, ...]:
        """``(y, dequant_ldj)``, and the batch's one-hot labels last if conditional."""
        x_train = self.data.x_train
        index = batch_indices(len(x_train), self.batch_size, self.cfg.seed, step)
        x = to_device(x_train[index], self.device)
        if self.cfg.train.hflip:  # flip a random half of the batch
            flip = torch.rand(len(x), device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.cfg.train.random_shift:
            x = random_shift(x, self.cfg.train.random_shift)
        context = self.context("train", index)
        if context is None:
            return model.dequantize(x)
        return (*model.dequantize(x, context), context)

    def loss(self, model: Flow, batch: tuple[Tensor, ...]) -> Tensor:
        y, dequant_ldj, *context = batch
        context = context[0] if context else None
        return -model.log_prob_continuous(y, dequant_ldj, context).mean()  # nats per example

    def train_metrics(self, loss: Tensor) -> dict[str, float]:
        bpd = bits_per_dim(-loss.detach(), self.data.num_dims).item()
        return {"train/nll": loss.item(), "train/bpd": bpd}

    def _evaluate(self, model: Flow, split: str, exact: bool | None = None) -> dict[str, float]:
        """evaluate_nll of a split, with exact ldjs if ``train.eval_ldj`` says so (or
        ``exact``)."""
        exact = self.cfg.train.eval_ldj == "exact" if exact is None else exact
        x, size = getattr(self.data, f"x_{split}"), self.cfg.train.eval_batch_size
        with exact_ldj(model) if exact else nullcontext():
            return evaluate_nll(model, x, size, self.device, self.context(split))

    def validate(self, model: Flow) -> dict[str, float]:
        return self._evaluate(model, "val")

    def test(self, model: Flow) -> dict[str, float]:
        """Test metrics of ``model`` (the best-validation one), and its validation metrics,
        with its batch norms' statistics first set from the training set if
        ``train.batch_norm_stats`` says so."""
        size = self.cfg.train.eval_batch_size
        if self.cfg.train.batch_norm_stats == "training_set":
            context = self.context("train")
            with eval_rng(self.device):
                y = torch.cat([model.dequantize(c.to(self.device))[0]
                               for c in self.data.x_train.split(size)])  # fmt: skip
            set_batch_norm_statistics(model.transform, y, size, context)
        test, val = self._evaluate(model, "test"), self._evaluate(model, "val")
        out = {f"test/{k}": v for k, v in test.items()} | {
            f"best_val/{k}": v for k, v in val.items()
        }
        if self.cfg.train.eval_ldj == "exact":  # the model's own (estimated) score beside it
            estimate = self._evaluate(model, "test", exact=False)
            out |= {"test/nll_estimate": estimate["nll"], "test/bpd_estimate": estimate["bpd"]}
        return out

    def figures(self, model, history, test, fig_dir, title) -> list[FigureRecord]:
        records, data, tc = [self._curves(history, fig_dir, title)], self.data, self.cfg.train
        plotting = _plotting()
        model.eval()
        if data.is_image and data.num_levels and tc.num_samples:
            context = None  # conditional: the classes in turn, 0, 1, …, one per grid cell
            if self.cfg.data.conditional:
                labels = torch.arange(tc.num_samples) % data.num_classes
                context = torch.nn.functional.one_hot(labels, data.num_classes).float()
                context = context.to(self.device)
            for t in tc.sample_temperatures:
                with eval_rng(self.device):  # the same base draw at every temperature
                    samples = model.sample(tc.num_samples, temperature=t, context=context)
                path = fig_dir / sample_figure_name(t)
                plotting.save_image_grid(samples, data.num_levels, path, f"{title} · T = {t:g}")
                records.append(FigureRecord(kind="samples", path=f"figures/{path.name}",
                                            temperature=t))  # fmt: skip
        elif data.num_dims == 2:
            # the density on a grid, kept for the report's side-by-side figure; exact where
            # the run is scored exactly (an estimated ldj would draw a noisy density)
            exact = exact_ldj(model) if tc.eval_ldj == "exact" else nullcontext()
            with exact:
                grid = plotting.density_grid_2d(model, data.x_test)
            path = plotting.save_density_grid(grid, fig_dir / "density_grid.npz")
            records.append(FigureRecord(kind="density_grid", path=f"figures/{path.name}"))
            with eval_rng(self.device):  # data, model density and model samples, side by side
                path = plotting.save_density_2d(
                    model, data.x_test, fig_dir / "samples.png", title, grid=grid
                )
            records.append(FigureRecord(kind="samples", path=f"figures/{path.name}",
                                        temperature=1.0))  # fmt: skip
        return records


# --- variational autoencoder ----------------------------------------------------------------


class VariationalAutoencoder(Objective):
    """A VAE (:class:`common.flows.vae.VAE`) on dynamically binarised images: each step draws
    a fresh binarisation of the batch (pixel on with probability level/(n − 1), as for the
    dynamically binarised MNIST of the IAF paper) and one posterior sample per example;
    loss = −ELBO in nats per example. Validation and test binarise once, from the evaluation
    seed, and use ``train.eval_samples`` (K) posterior samples per example: the ELBO is
    their mean log-weight, log p(x) their importance-sampled estimate
    log (1/K) Σ_k w_k (``nll`` = −log p(x)). The best-validation model by the ELBO is tested."""

    curve = ("train/neg_elbo", "val/neg_elbo")
    curve_label = "−ELBO (nats / example)"
    select_on = "neg_elbo"

    def build(self, device: torch.device):
        cfg, self.device = self.cfg, device
        self.data = data = load_dataset(cfg.data.name, cfg.data.root)
        if not data.num_levels:
            raise ConfigError(f"a VAE on binarised data needs discrete images; "
                              f"{cfg.data.name!r} is continuous")  # fmt: skip
        if cfg.data.conditional:
            raise ConfigError("data.conditional: the VAE objective does not condition on "
                              "labels")  # fmt: skip
        self.dataset, self.data_md5 = f"{cfg.data.name}_binarized", data.md5
        self.batch_size = min(cfg.train.batch_size, len(data.x_train))
        model = self.build_model(cfg.model, data)
        self.latent_features = model.latent_features
        return model

    def _binarize(self, x: Tensor) -> Tensor:
        probs = to_device(x, self.device).flatten(1).float() / (self.data.num_levels - 1)
        return torch.bernoulli(probs)

    def batch(self, model, step: int) -> tuple[Tensor, Tensor]:
        x_train = self.data.x_train
        x = self._binarize(x_train[batch_indices(len(x_train), self.batch_size, self.cfg.seed,
                                                 step)])  # fmt: skip
        return x, torch.randn(1, len(x), self.latent_features, device=self.device)

    def loss(self, model, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, eps = batch
        return -model.log_weights(x, eps).mean()

    def shard(self, batch: tuple[Tensor, Tensor], rank: int, world_size: int):
        x, eps = batch  # eps: (1, B, latent), the examples along its second dimension
        return x.chunk(world_size)[rank], eps.chunk(world_size, dim=1)[rank]

    def train_metrics(self, loss: Tensor) -> dict[str, float]:
        return {"train/neg_elbo": loss.item()}

    @torch.no_grad()
    def evaluate(self, model, x: Tensor) -> dict[str, float]:
        """ELBO and importance-sampled log p(x) (nats per example) of ``x``, binarised once."""
        K, elbo, log_px = self.cfg.train.eval_samples, 0.0, 0.0
        with eval_rng(self.device):
            for chunk in x.split(self.cfg.train.eval_batch_size):
                xb = self._binarize(chunk)
                log_w = model.log_weights(
                    xb, torch.randn(K, len(xb), self.latent_features, device=self.device)
                )
                elbo += log_w.mean(0).sum().item()
                log_px += (torch.logsumexp(log_w, 0) - math.log(K)).sum().item()
        n = len(x)
        return {"elbo": elbo / n, "neg_elbo": -elbo / n, "log_px": log_px / n, "nll": -log_px / n}

    def validate(self, model) -> dict[str, float]:
        return self.evaluate(model, self.data.x_val)

    def test(self, model) -> dict[str, float]:
        test, val = self.evaluate(model, self.data.x_test), self.evaluate(model, self.data.x_val)
        return {f"test/{k}": v for k, v in test.items()} | {
            f"best_val/{k}": v for k, v in val.items()
        }

    def figures(self, model, history, test, fig_dir, title) -> list[FigureRecord]:
        records = [self._curves(history, fig_dir, title)]
        if self.cfg.train.num_samples:
            with eval_rng(self.device):
                means = model.sample(self.cfg.train.num_samples)
            images = means.reshape(-1, *self.data.event_shape)
            # probabilities in [0, 1] drawn as grey values: the scale of 2-level images
            path = _plotting().save_image_grid(images, 2, fig_dir / "samples.png",
                                               f"{title} · E[x | z], z ~ p(z)")  # fmt: skip
            records.append(FigureRecord(kind="samples", path=f"figures/{path.name}",
                                        temperature=1.0))  # fmt: skip
        return records


# --- reverse KL -------------------------------------------------------------------------------


@torch.no_grad()
def kl_metrics(model: Flow, target: Target, n: int, batch_size: int = 5000) -> dict[str, float]:
    """From ``n`` samples x_i ~ q with weights w_i = p̃(x_i)/q(x_i) (Rezende et al. 2020,
    Sec. 5): log Ẑ = log mean w; KL ≈ mean log(q/p̃) + log Ẑ (biased low); ESS (%) =
    100·(Σw)²/(N Σw²); and, where log Z is known, the exact KL = mean log(q/p̃) + log Z
    (unbiased).

    Each estimate comes with its Monte-Carlo standard error (``*_se``): the error of this one
    draw of ``n`` samples, apart from the spread over training seeds. For a smooth function
    f(m) of sample means m, se = std(ψ_i)/√n with ψ_i f's influence on sample i (the delta
    method): ψ_i = −ℓ_i + w_i/w̄ for the KL estimate (ℓ = log w), −ℓ_i for the exact KL, and
    100·(2 w_i/w̄ − w_i²/m₂)·w̄²/m₂ for the ESS (m₂ = mean w²). Weights are scaled by their
    maximum first: every ratio is unchanged and nothing overflows."""
    log_w = []
    for chunk in range(0, n, batch_size):
        x, log_q = model.sample_with_log_prob(min(batch_size, n - chunk))
        log_w.append(target.log_unnormalized(x) - log_q)
    log_w = torch.cat(log_w).double()
    log_z_hat = (torch.logsumexp(log_w, 0) - math.log(n)).item()
    w = (log_w - log_w.max()).exp()
    w_bar, m2 = w.mean(), (w * w).mean()
    ess = w_bar**2 / m2
    out = {
        "kl": -log_w.mean().item() + log_z_hat,
        "kl_se": _se(-log_w + w / w_bar),
        "ess": 100 * ess.item(),
        "ess_se": 100 * _se((2 * w / w_bar - w * w / m2) * ess),
        "log_z_estimate": log_z_hat,
    }
    if target.log_z is not None:
        out["kl_exact"] = -log_w.mean().item() + target.log_z
        out["kl_exact_se"] = _se(log_w)
    return out


def _se(influence: Tensor) -> float:
    """Standard error of a mean whose per-sample terms are ``influence``."""
    return (influence.std() / math.sqrt(len(influence))).item()


class ReverseKL(Objective):
    """Reverse KL to an unnormalised target p̃ = Z·p, from the flow's own reparametrised
    samples (no data): loss = E_q[log q(x) − log p̃(x)] = KL(q ‖ p) − log Z (Rezende et al.
    2020, Sec. 5). A step's input is the base draw z; the loss maps it through the flow. The
    final model is tested: KL and ESS (:func:`kl_metrics`) and, on 2-D domains, the mass of
    its density by quadrature (``test/quadrature_mass``: 1 when every log-determinant is
    right) and that of the target with its log Z (``test/target_quadrature_mass``)."""

    curve = ("train/kl", "val/kl")
    curve_label = "KL(q ‖ p) (nats)"

    def __init__(
        self,
        cfg: VariationalRunConfig,
        build_model: Callable[[Any, Target], Flow],
        build_target: Callable[[Any], Target],
    ) -> None:
        super().__init__(cfg, build_model)
        if cfg.train.patience is not None:
            raise ConfigError("train.patience: reverse-KL runs test the final model, so there "
                              "is nothing to stop early for; remove the key")  # fmt: skip
        self.build_target = build_target
        self.grids: tuple = ()

    def build(self, device: torch.device) -> Flow:
        self.device = device
        self.target = target = self.build_target(self.cfg.target)
        self.log_z = target.log_z if target.log_z is not None else 0.0
        self.dataset, self.data_md5 = target.name, "analytic target"
        self.batch_size = self.cfg.train.batch_size
        return self.build_model(self.cfg.model, target)

    def batch(self, model: Flow, step: int) -> Tensor:
        return model.base.sample(self.batch_size)

    def loss(self, model: Flow, z: Tensor) -> Tensor:
        x, log_q = model.from_base(z)
        return (log_q - self.target.log_unnormalized(x)).mean()

    def train_metrics(self, loss: Tensor) -> dict[str, float]:
        return {"train/loss": loss.item(), "train/kl": loss.item() + self.log_z}

    def validate(self, model: Flow) -> dict[str, float]:
        with eval_rng(self.device):
            return kl_metrics(model, self.target, self.cfg.train.monitor_samples)

    def test(self, model: Flow) -> dict[str, float]:
        """KL and ESS from ``train.eval_samples`` samples drawn with this seed's own stream
        (:data:`EVAL_SEED` + 1 + seed), so that the spread over seeds includes the
        Monte-Carlo error of the estimate, which ``test/*_se`` states for each run."""
        with eval_rng(self.device, EVAL_SEED + 1 + self.cfg.seed):
            kl = kl_metrics(model, self.target, self.cfg.train.eval_samples)
        out = {f"test/{k}": v for k, v in kl.items()}
        domain, n = self.target.domain, self.cfg.train.grid_size
        if domain.dim == 2:
            model_logq, mass, coords = density_on_grid(model.log_prob, domain, n)
            target_logp, target_mass, _ = density_on_grid(
                lambda x: self.target.log_unnormalized(x) - self.log_z, domain, n
            )
            out |= {"test/quadrature_mass": mass, "test/target_quadrature_mass": target_mass}
            self.grids = (target_logp, model_logq, coords)
        return out

    def figures(self, model, history, test, fig_dir, title) -> list[FigureRecord]:
        records = [self._curves(history, fig_dir, title)]
        if self.grids:
            subtitle = f"{title}\nKL {test['test/kl']:.3f} nats · ESS {test['test/ess']:.1f} %"
            plotting = _plotting()
            sphere = self.target.domain.kind == "sphere"
            saver = plotting.save_sphere_density if sphere else plotting.save_flat_density
            path = saver(*self.grids, fig_dir / "density.png", subtitle)
            records.append(FigureRecord(kind="density", path=f"figures/{path.name}"))
        return records

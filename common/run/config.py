"""Typed, validated run configuration — the one config system of the repository.

A run is described by a YAML file validated against a pydantic model *before any compute*:
unknown keys and wrong types fail with a ``ConfigError`` that names the key and what is
allowed. Dotted overrides (``--set train.lr=3e-4``) are applied to the raw mapping first,
so they are validated the same way. The resolved config is saved with every run.

Each paper subclasses :class:`RunConfig` and narrows ``model`` to its own model configs.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.data_registry import DATASETS
from common.files import write_atomic

__all__ = [
    "BATCH_NORM_MIN_BATCH",
    "ConfigByModel",
    "ConfigError",
    "DataConfig",
    "DiagonalGaussianModel",
    "JobResources",
    "KLTrainConfig",
    "OptimConfig",
    "RunBase",
    "RunConfig",
    "ScheduleConfig",
    "StrictModel",
    "TrainBase",
    "TrainConfig",
    "VAERunConfig",
    "VAETrainConfig",
    "VariationalRunConfig",
    "apply_overrides",
    "flatten",
    "load_config",
    "save_config",
]

Scale = Literal["smoke", "cpu", "paper"]
DatasetName = Literal[tuple(sorted(DATASETS))]  # type: ignore[valid-type]


class ConfigError(ValueError):
    """A configuration that cannot run: unknown key, wrong type, bad override or file."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are type-checked, and
    floats are finite (``lr: .inf`` would pass ``gt=0`` and then train on NaNs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(StrictModel):
    name: DatasetName = Field(description="dataset, see common.data_registry.DATASETS")
    root: str = Field("data", description="folder holding the .npz files (tracked by DVC)")
    conditional: bool = Field(
        False, description="condition the model on each example's one-hot class label and "
        "score −log p(x | y) (labelled data only; MAF Table 2's conditional column)",
    )  # fmt: skip


class OptimConfig(StrictModel):
    name: Literal["adam", "adamax", "rmsprop", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, description="rmsprop / sgd only")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (coupled, as in Adam)")


class ScheduleConfig(StrictModel):
    name: Literal["constant", "cosine", "exponential"] = "constant"
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0")
    gamma: float = Field(1.0, gt=0, le=1, description="per-step decay for 'exponential'")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="floor of 'cosine', × lr")


class TrainBase(StrictModel):
    """What every objective's training has: budget, cadence, optimiser, schedule, guards."""

    batch_size: int = Field(..., gt=0)
    max_steps: int = Field(
        ..., ge=0, description="gradient steps; 0 for a model fitted in closed form (the "
        "Gaussian baseline), which is then validated and tested as built",
    )  # fmt: skip
    eval_every: int = Field(100, gt=0, description="steps between validations")
    log_every: int = Field(10, gt=0, description="steps between train-metric logs")
    checkpoint_every: int = Field(500, gt=0, description="steps between resumable checkpoints")
    patience: int | None = Field(
        None, gt=0, description="early stop after N validations without improvement "
        "(objectives that select a best model only)",
    )  # fmt: skip
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm")
    polyak_decay: float | None = Field(
        None, gt=0, lt=1, description="evaluate an exponential moving average of the weights "
        "(Polyak averaging, as in the Glow authors' code) with this decay per step",
    )  # fmt: skip
    compile: bool = Field(
        False, description="torch.compile the step (faster steps after a compile of 10-100 s: "
        "worth it for long runs, not for smoke tests); see compile_mode",
    )  # fmt: skip
    compile_mode: Literal["graph", "loss"] = Field(
        "graph", description="what train.compile compiles besides the optimiser update: "
        "'graph', the loss and its gradient as one graph (fastest for small flows: a T2 step "
        "0.99 ms against 1.28 with 'loss'), or 'loss', the loss alone with autograd's backward "
        "(faster for convolutional flows: a Glow training step 61 ms against 85 with 'graph')",
    )  # fmt: skip
    precision: Literal["float32", "bf16"] = Field(
        "float32", description="'bf16': during training the networks (the coupling layers' "
        "conditioners) run in bfloat16 under autocast, the flow's data stream and "
        "log-determinants in float32 (common.flows.precision); validation and tests always "
        "run in float32. For GPUs with bfloat16 units (A100, H100); slower on a CPU",
    )  # fmt: skip
    channels_last: bool = Field(
        False, description="image models and batches in the channels-last memory format "
        "(faster convolutions on GPUs with tensor cores, with bf16 especially)",
    )  # fmt: skip
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()


class TrainConfig(TrainBase):
    """Maximum-likelihood training on a dataset (:class:`~common.run.objectives.MaximumLikelihood`):
    the best-validation model is tested."""

    eval_batch_size: int = Field(1000, gt=0)
    num_samples: int = Field(64, ge=0, description="samples drawn for the figure")
    sample_temperatures: tuple[float, ...] = Field(
        (1.0,), min_length=1, description="base temperatures of the sample figures (Glow Sec. 5)"
    )
    hflip: bool = Field(False, description="random horizontal flips of training images")
    random_shift: int = Field(
        0, ge=0, description="random translations of training images by up to this many "
        "pixels, edges repeated (the Glow authors' CIFAR-10 augmentation)",
    )  # fmt: skip
    batch_norm_stats: Literal["running", "training_set"] = Field(
        "running", description="the statistics batch-norm layers use at test time: their "
        "running averages, or the mean and variance over the whole training set, set before "
        "the test (the MAF authors' protocol); validation uses the running averages",
    )  # fmt: skip
    eval_ldj: Literal["model", "exact"] = Field(
        "model", description="the ldj of layers that estimate it (i-ResNet's blocks) at "
        "validation and test: the model's estimate, or the exact value (dense Jacobian: small "
        "D only), in which case the test also reports the estimate as test/nll_estimate",
    )  # fmt: skip


class DiagonalGaussianModel(StrictModel):
    """The baseline every density is compared against: an independent Gaussian per dimension."""

    name: Literal["diagonal_gaussian"] = "diagonal_gaussian"
    logit_alpha: float | None = Field(
        None, gt=0, lt=0.5, description="apply Logit(alpha) before the Gaussian (image data); "
        "0 < alpha < 0.5, as logit(alpha + (1 - 2 alpha) x) needs",
    )  # fmt: skip
    fit: Literal["closed_form", "gradient"] = Field(
        "closed_form", description="'closed_form': the maximum-likelihood mean and variance "
        "of the preprocessed training data (train.max_steps: 0); 'gradient': trained like "
        "the flows (an under-trained baseline overstates every flow's margin)",
    )  # fmt: skip
    fit_draws: int = Field(
        16, gt=0, description="dequantization draws of the training set the closed-form "
        "moments average over (discrete data)",
    )  # fmt: skip


class JobResources(StrictModel):
    """What the run's pipeline job asks of its machine or cluster (Snakemake's ``resources``,
    which the Slurm executor turns into ``sbatch`` options); unset keys take the profile's
    defaults (``default-resources``). None of them changes the result."""

    processes: int = Field(
        1, gt=0, description="data-parallel processes: the pipeline launches the run with "
        "torchrun --nproc-per-node N, one GPU each on a GPU machine (resources gpu=N); the "
        "run takes the same steps as one process with the same train.batch_size",
    )  # fmt: skip
    mem_mb: int | None = Field(None, gt=0, description="memory of the job (MB)")
    runtime: int | None = Field(None, gt=0, description="wall-time limit of the job (minutes)")


class RunBase(StrictModel):
    """Fields every run of every paper has; ``model`` is narrowed by each paper."""

    paper: str
    experiment: str = Field(..., description="experiment name: unique within the paper")
    scale: Scale = Field(..., description="smoke (seconds), cpu (minutes), paper (GPU)")
    seed: int = Field(0, ge=0, description="seeds torch, numpy and Python's random (≥ 0)")
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    threads: int = Field(1, gt=0, description="torch intra-op threads per process (1: "
                         "parallel jobs)")  # fmt: skip
    resources: JobResources = JobResources()


BATCH_NORM_MIN_BATCH = 16
"""The smallest training batch a model with batch normalisation (batch statistics) accepts:
a batch of 1 has zero variance (one run "trained" to NLL -93 and validated at 5e9), and the
variance of a batch of B has a relative standard error of about sqrt(2 / (B - 1)), 37 % at 16."""


class RunConfig(RunBase):
    """A flow trained by maximum likelihood on a dataset."""

    data: DataConfig
    train: TrainConfig
    model: Any

    @model_validator(mode="after")
    def _closed_form_takes_no_steps(self) -> RunConfig:
        closed = isinstance(self.model, DiagonalGaussianModel) and self.model.fit == "closed_form"
        if closed and self.train.max_steps:
            raise ValueError(
                "model.fit 'closed_form' is the maximum-likelihood fit already: set "
                "train.max_steps: 0 (gradient steps would only add noise to it)"
            )
        if not closed and not self.train.max_steps:
            raise ValueError("train.max_steps: 0 is for a model fitted in closed form only")
        if (
            getattr(self.model, "batch_norm", False)
            and self.train.batch_size < BATCH_NORM_MIN_BATCH
        ):
            raise ValueError(
                f"model.batch_norm normalises with batch statistics, which train.batch_size "
                f"{self.train.batch_size} makes degenerate: use a batch of at least "
                f"{BATCH_NORM_MIN_BATCH}, or model.batch_norm: false"
            )
        return self


class VAETrainConfig(TrainBase):
    """Variational-autoencoder training by the ELBO on dynamically binarised images
    (:class:`~common.run.objectives.VariationalAutoencoder`): the best-validation model (by
    the ELBO) is tested by importance sampling."""

    eval_batch_size: int = Field(500, gt=0)
    eval_samples: int = Field(
        128, gt=0, description="posterior samples per example for the validation and test "
        "ELBO and the importance-sampled log p(x) (IAF, Sec. 5.1: at least 128)",
    )  # fmt: skip
    num_samples: int = Field(64, ge=0, description="prior samples drawn for the figure")


class VAERunConfig(RunBase):
    """A variational autoencoder trained on a dataset; ``model`` is narrowed by the paper."""

    data: DataConfig
    train: VAETrainConfig
    model: Any


class ConfigByModel:
    """The config classes of a paper whose experiments are of several kinds (MAF's flows,
    trained by maximum likelihood, and IAF's VAEs, by the ELBO): :func:`load_config` picks
    the class by the experiment's ``model.name``, ``default`` for every other name."""

    def __init__(self, default: type[StrictModel], **by_model: type[StrictModel]) -> None:
        self.default, self.by_model = default, by_model

    def select(self, raw: dict[str, Any]) -> type[StrictModel]:
        """The class for ``raw``; a ``model.name`` no class knows is named with every allowed
        one (the default class alone would list only its own and flag every other key)."""
        model = raw.get("model")
        name = model.get("name") if isinstance(model, dict) else None
        if name in self.by_model:
            return self.by_model[name]
        known = _model_names(self.default)
        if isinstance(name, str) and known and name not in known:
            allowed = ", ".join(sorted([*known, *self.by_model]))
            raise ConfigError(f"model.name: unknown model {name!r}; allowed: {allowed}")
        return self.default


def _model_names(cls: type[StrictModel]) -> list[str]:
    """The ``name`` literals of the model configs ``cls.model`` accepts (a tagged union)."""
    annotation, names = cls.model_fields["model"].annotation, []
    for member in typing.get_args(annotation) or (annotation,):
        field = getattr(member, "model_fields", {}).get("name")
        if field is not None:
            names += typing.get_args(field.annotation)
    return names


class KLTrainConfig(TrainBase):
    """Reverse-KL training towards an unnormalised target (Rezende et al. 2020, Sec. 5;
    :class:`common.run.objectives.ReverseKL`): each step draws ``batch_size`` samples from the
    flow and minimises E_q[log q − log p̃]. The final model is evaluated."""

    batch_size: int = Field(256, gt=0)
    max_steps: int = Field(..., gt=0)
    eval_every: int = Field(1000, gt=0, description="steps between monitoring estimates")
    log_every: int = Field(100, gt=0, description="steps between train-metric logs")
    checkpoint_every: int = Field(2000, gt=0, description="steps between resumable checkpoints")
    monitor_samples: int = Field(2000, gt=1, description="samples per monitoring estimate")
    eval_samples: int = Field(20000, gt=1, description="samples of the final KL/ESS estimate")
    grid_size: int = Field(400, gt=1, description="quadrature/figure nodes per coordinate")
    optim: OptimConfig = OptimConfig(lr=2e-4)


class VariationalRunConfig(RunBase):
    """A flow fitted to an analytic target by reverse KL: no dataset; ``target`` and ``model``
    are narrowed by each paper."""

    target: Any
    train: KLTrainConfig
    model: Any


C = TypeVar("C", bound=StrictModel)


_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _parse_value(text: str) -> Any:
    """YAML scalar parsing, except that ``3e-4`` is a float (YAML 1.1 reads it as a string)."""
    if _SCIENTIFIC.match(text.strip()):
        return float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse override value {text!r}: {exc}") from exc


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
    out = yaml.safe_load(yaml.safe_dump(raw))  # deep copy: never mutate the caller's mapping
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return out


def _section_fields(cls: type[BaseModel], loc: tuple) -> list[str] | None:
    """The allowed keys of the section at ``loc`` (walking nested models and tagged unions)."""
    model: Any = cls
    for part in loc:
        if isinstance(model, list):  # a tagged union: this loc element names the member
            tagged = [m for m in model if m.model_fields.get("name") and
                      typing.get_args(m.model_fields["name"].annotation) == (part,)]  # fmt: skip
            if not tagged:
                return None
            model = tagged[0]
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        if part in model.model_fields:
            annotation = model.model_fields[part].annotation
            members = [
                a
                for a in typing.get_args(annotation)
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
            elif len(members) == 1:
                model = members[0]
            elif members:  # a tagged union: the next loc element is the tag
                model = members
            else:
                return None
        else:
            return None
    if isinstance(model, list):
        return None
    return sorted(model.model_fields)


def _format_errors(cls: type[BaseModel], exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            allowed = _section_fields(cls, loc[:-1])
            hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  {key}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def validate_config(cls: type[C], raw: dict[str, Any], source: str = "") -> C:
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(cls, exc, source)) from None


def load_config(cls: type[C] | ConfigByModel, path: str | Path, overrides: list[str] = ()) -> C:
    """Read ``path`` (YAML), apply ``overrides``, validate against ``cls`` (or the class a
    :class:`ConfigByModel` picks for it)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    raw = apply_overrides(raw, list(overrides))
    if isinstance(cls, ConfigByModel):
        cls = cls.select(raw)
    return validate_config(cls, raw, str(path))


def save_config(cfg: BaseModel, path: str | Path) -> Path:
    return write_atomic(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} → {"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, key + ".")
        else:
            out[key] = v
    return out


def model_union(*models: type[StrictModel]) -> Any:
    """``Annotated[A | B, Field(discriminator="name")]``: a paper's choice of model configs,
    selected by their ``name`` literal."""
    if len(models) == 1:
        return models[0]
    return Annotated[typing.Union[models], Field(discriminator="name")]  # noqa: UP007

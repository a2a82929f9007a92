"""Load a trained flow in one call: from a run directory or an MLflow run id to a ready
:class:`~common.flows.flow.Flow` (its kept weights, evaluation mode, on a device), with
``log_prob`` and ``sample``::

    >>> from common.run.load import load_flow
    >>> flow = load_flow(RUN)  # e.g. "runs/cpu/glow/digits_conv_affine/seed0", or an MLflow run id
    >>> x = flow.sample(16)  # (16, *event_shape): images in grey levels, vectors as floats
    >>> flow.log_prob(x).shape
    torch.Size([16])

The model is rebuilt from the run's ``config.yaml`` by its paper's builder
(``papers.<paper>.config``: ``CONFIG``, ``OBJECTIVE``, ``build_model``) and
``checkpoints/model.json``, which the trainer
writes beside the weights: the data's shape and kind, so that no dataset is loaded. The kept
weights are ``final.pt`` where the run tested its final model (variational fits) and
``best.pt`` (the best-validation model) otherwise. A VAE (MAF/IAF's ``vae`` runs) is not a
density model of its data and is refused with a clear error.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from pathlib import Path

import torch
import yaml

from common.data import Dataset
from common.flows.flow import Flow
from common.run.config import ConfigError, load_config
from common.run.loop import resolve_device

__all__ = ["load_flow", "stand_in_dataset"]


def stand_in_dataset(spec: dict) -> Dataset:
    """A :class:`~common.data.Dataset` of the recorded shape and kind holding two zero
    examples per split: what a builder reads (shapes, levels, classes), with no values."""
    x = torch.zeros(2, *spec["event_shape"], dtype=getattr(torch, spec["dtype"]))
    data = Dataset(spec["name"], x, x, x, spec["num_levels"], md5="stand-in",
                   num_classes=spec["num_classes"])  # fmt: skip
    data.context_features = spec["context_features"]
    return data


def _run_files(source: str | Path, tracking_uri: str | None) -> Path:
    """The run directory itself, or the run's MLflow artifacts downloaded to a temporary one."""
    path = Path(source)
    if path.is_dir():
        return path
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from common.run.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    try:
        client.get_run(str(source))
    except MlflowException:
        raise ConfigError(
            f"{source!r} is neither a run directory nor a run id in the MLflow store "
            f"{client.tracking_uri} (pass tracking_uri=... for another store)"
        ) from None
    dest = Path(tempfile.mkdtemp(prefix="flow-run-"))
    for artifact in ("config.yaml", "checkpoints"):
        client.download_artifacts(str(source), artifact, str(dest))
    return dest


def load_flow(source: str | Path, device: str = "auto", tracking_uri: str | None = None) -> Flow:
    """The trained flow of run ``source`` (a run directory, or an MLflow run id looked up in
    ``tracking_uri``, default the project's store), in evaluation mode on ``device``
    (``"auto"``: a GPU where there is one)."""
    run = _run_files(source, tracking_uri)
    spec_path, config_path = run / "checkpoints" / "model.json", run / "config.yaml"
    for path in (config_path, spec_path):
        if not path.exists():
            raise ConfigError(
                f"{path} is missing: {run} is not a finished run directory of this project, "
                "or it was trained before runs recorded their model spec (retrain it)"
            )
    paper = yaml.safe_load(config_path.read_text())["paper"]
    entry = importlib.import_module(f"papers.{paper}.config")  # what its entry point trains with
    cfg = load_config(entry.CONFIG, config_path)
    spec = json.loads(spec_path.read_text())
    if spec["objective"] == "VariationalAutoencoder":
        raise ConfigError(f"{run} is a VAE run (model {cfg.model.name!r}): an encoder-decoder, "
                          "not a flow over the data; load_flow loads flows")  # fmt: skip
    where = resolve_device(device)
    if "data" in spec:  # maximum likelihood: the builder reads the data's shape
        flow = entry.build_model(cfg.model, stand_in_dataset(spec["data"]))
    else:  # a variational fit: built from its target, as in training
        flow = entry.OBJECTIVE(cfg, entry.build_model).build(where)
    ckpt = run / "checkpoints"
    kept = ckpt / "final.pt" if (ckpt / "final.pt").exists() else ckpt / "best.pt"
    if not kept.exists():
        raise ConfigError(f"{run} has no kept weights (checkpoints/best.pt or final.pt): "
                          "the run has not finished; run its command again")  # fmt: skip
    flow.load_state_dict(torch.load(kept, map_location="cpu", weights_only=True))
    return flow.to(where).eval()

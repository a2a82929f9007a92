"""Datasets: what is offline (scikit-learn digits, FFJORD's 2-D toys, patches of scikit-learn's
sample photographs) and what is downloaded (MNIST, CIFAR-10, the MAF tabular bundle), behind one
``load_dataset(name, root)``.

Every dataset is stored under ``data/`` as a few deterministic ``.npz`` files (tracked by the
top-level ``data.dvc``) with ``x_train``, ``x_val`` and ``x_test`` arrays. Images are uint8
levels of shape ``(N, C, H, W)``; toy sets are float32 ``(N, 2)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from common.data.cifar10 import prepare_cifar10
from common.data.errors import ChecksumError, DatasetError, DatasetNotFoundError
from common.data.maf_tabular import MAF_TABULAR, prepare_maf_tabular
from common.data.mnist import prepare_mnist
from common.data.npz import file_md5, save_npz
from common.data.patches import build_photo_patches
from common.data.toy import TOY_DATASETS, make_toy_splits
from common.data.validate import read_dataset_file, validate_splits
from common.data_registry import DATASETS, dataset_path, raw_paths

__all__ = [
    "DATASETS",
    "MAF_TABULAR",
    "ChecksumError",
    "Dataset",
    "DatasetError",
    "DatasetNotFoundError",
    "build_digits",
    "build_offline",
    "dataset_path",
    "load_dataset",
    "prepare_cifar10",
    "prepare_maf_tabular",
    "prepare_mnist",
]


@dataclass
class Dataset:
    """A loaded dataset. ``num_levels`` is the number of grey levels of discrete data (None for
    continuous data); ``md5`` is the hash of the file it came from (logged with every run).
    Labelled data has ``y_<split>`` (int64 ``(N,)``) and ``num_classes``; ``context_features``
    is the size of the context a model built for it must take (the one-hot label of a
    conditional experiment, ``data.conditional``; 0 otherwise), set by the objective."""

    name: str
    x_train: Tensor
    x_val: Tensor
    x_test: Tensor
    num_levels: int | None
    md5: str
    y_train: Tensor | None = None
    y_val: Tensor | None = None
    y_test: Tensor | None = None
    num_classes: int | None = None
    context_features: int = 0

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.event_shape))

    @property
    def is_image(self) -> bool:
        return self.x_train.ndim == 4


def build_digits(root: str | Path, n_val: int = 180, n_test: int = 180) -> Path:
    """scikit-learn's bundled 8×8 digits (1,797 images, 17 grey levels 0…16), shuffled with a
    fixed seed and split 1437 / 180 / 180. Stored as uint8 ``(N, 1, 8, 8)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], bunch.target[order].astype(np.uint8)
    n_train = len(images) - n_val - n_test
    cuts = {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val),
            "test": slice(n_train + n_val, None)}  # fmt: skip
    arrays = {f"x_{k}": images[s] for k, s in cuts.items()}
    arrays |= {f"y_{k}": labels[s] for k, s in cuts.items()}
    return save_npz(dataset_path("digits", root), **arrays)


def build_offline(root: str | Path) -> list[Path]:
    """Build every offline dataset under ``root``; byte-identical on every run."""
    paths = [build_digits(root), build_photo_patches(root)]
    for name in TOY_DATASETS:
        paths.append(save_npz(dataset_path(name, root), **make_toy_splits(name)))
    return paths


def load_dataset(name: str, root: str | Path) -> Dataset:
    """Load ``name`` from ``root`` (usually ``data/``), validated against its registry entry
    (:mod:`common.data.validate`), or say how to create it."""
    path = dataset_path(name, root)
    if not path.exists():
        raw = " ".join(f"{p}.dvc" for p in raw_paths(name))
        how = (
            f"It is built from downloaded files: `python -m common.data prepare --datasets "
            f"{name} --no-offline` fetches them (internet access needed) unless they are in "
            f"downloads/ already, e.g. from a DVC remote that holds them (`dvc pull {raw}`); "
            "or run the pipeline at `--config profile=paper`, which does both."
            if DATASETS[name].download
            else "Build the offline datasets with `python -m common.data prepare`, or fetch them "
            "with `dvc pull data.dvc` (or run the pipeline, whose `data` rule does either)."
        )
        raise DatasetNotFoundError(f"dataset {name!r} not found at {path}. {how}")
    info = DATASETS[name]
    arrays = validate_splits(name, path, read_dataset_file(name, path), info)
    labels = {}
    if info.num_classes is not None:
        labels = {f"y_{s}": torch.from_numpy(arrays[f"y_{s}"].astype(np.int64))
                  for s in ("train", "val", "test")}  # fmt: skip
    return Dataset(
        name=name,
        x_train=torch.from_numpy(arrays["x_train"]),
        x_val=torch.from_numpy(arrays["x_val"]),
        x_test=torch.from_numpy(arrays["x_test"]),
        num_levels=info.num_levels,
        md5=file_md5(path),
        num_classes=info.num_classes,
        **labels,
    )

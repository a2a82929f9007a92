"""CIFAR-10 from the original "python version" tarball (Krizhevsky 2009), MD5-verified.

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch``:
Python pickles (written by Python 2's cPickle, hence ``encoding='bytes'``) of dicts with
``b'data'`` (10000 × 3072 uint8, each row 1024 red, 1024 green, 1024 blue values in row-major
order) and ``b'labels'``. It is converted once into ``data/cifar10.npz``: train = the first
45,000 training images, val = the last 5,000, test = the official 10,000, as uint8
``(N, 3, 32, 32)`` levels in 0…255.

The pickles are read only after the tarball's MD5 matched the published one: unpickling runs
code from the file, so an unverified archive is never opened.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from common.data.download import fetch
from common.data.npz import save_npz

__all__ = ["CIFAR10_MD5", "CIFAR10_URLS", "prepare_cifar10", "read_cifar10_tarball"]

CIFAR10_URLS = ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_TRAIN = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
_TEST = ["cifar-10-batches-py/test_batch"]


def _read_batches(tar: tarfile.TarFile, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        try:
            member = tar.extractfile(name)
        except KeyError:
            raise ValueError(
                f"{tar.name}: no member {name!r}; not the CIFAR-10 python tarball"
            ) from None
        batch = pickle.load(member, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{name}: expected (N, 3072) uint8 rows, got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))  # (N, C, H, W): rows are R, G, B planes
        labels.append(np.asarray(batch[b"labels"], dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def read_cifar10_tarball(path: Path) -> dict[str, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels of the training and test batches."""
    with tarfile.open(path, "r:gz") as tar:
        x, y = _read_batches(tar, _TRAIN)
        x_test, y_test = _read_batches(tar, _TEST)
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def prepare_cifar10(
    data_root: Path,
    download_root: Path,
    urls: list[str] | None = None,
    md5: str = CIFAR10_MD5,
    n_val: int = 5_000,
) -> Path:
    """Fetch (or reuse) the verified tarball and write ``data_root/cifar10.npz``.
    ``urls`` and ``md5`` default to the published ones; tests pass their own."""
    tarball = fetch(urls or CIFAR10_URLS, Path(download_root) / "cifar-10-python.tar.gz", md5)
    arrays = read_cifar10_tarball(tarball)
    x, y = arrays["x"], arrays["y"]
    n_train = len(x) - n_val
    return save_npz(
        Path(data_root) / "cifar10.npz",
        x_train=x[:n_train], y_train=y[:n_train],
        x_val=x[n_train:], y_val=y[n_train:],
        x_test=arrays["x_test"], y_test=arrays["y_test"],
    )  # fmt: skip

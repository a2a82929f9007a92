"""MNIST from the original IDX files (LeCun, Cortes & Burges), MD5-verified.

The four gzipped IDX files are fetched into ``downloads/mnist/`` and converted once into
``data/mnist.npz``: train = the first 50,000 training images, val = the last 10,000, test = the
official 10,000 (NICE, Sec. 5.1). Pixel values stay uint8 levels in 0…255.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from common.data.download import fetch
from common.data.npz import save_npz

__all__ = ["MNIST_FILES", "MNIST_MIRRORS", "prepare_mnist", "read_idx"]

# The original host first; the PyTorch mirror serves byte-identical files.
MNIST_MIRRORS = [
    "http://yann.lecun.com/exdb/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
]
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse a (gzipped) IDX file: magic = two zero bytes, a type code, the number of
    dimensions; then big-endian int32 sizes; then the data in C order."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def prepare_mnist(
    data_root: Path,
    download_root: Path,
    mirrors: list[str] | None = None,
    files: dict[str, str] | None = None,
    n_val: int = 10_000,
) -> Path:
    """Fetch (or reuse) the verified IDX files and write ``data_root/mnist.npz``.

    ``mirrors`` and ``files`` (name → MD5) default to the published ones; tests pass their own.
    """
    mirrors = MNIST_MIRRORS if mirrors is None else mirrors
    files = MNIST_FILES if files is None else files
    paths = {
        name: fetch([m + name for m in mirrors], Path(download_root) / "mnist" / name, md5)
        for name, md5 in files.items()
    }
    x = read_idx(paths["train-images-idx3-ubyte.gz"])[:, None]  # (60000, 1, 28, 28) uint8
    y = read_idx(paths["train-labels-idx1-ubyte.gz"])
    x_test = read_idx(paths["t10k-images-idx3-ubyte.gz"])[:, None]
    y_test = read_idx(paths["t10k-labels-idx1-ubyte.gz"])
    n_train = len(x) - n_val
    return save_npz(
        Path(data_root) / "mnist.npz",
        x_train=x[:n_train], y_train=y[:n_train],
        x_val=x[n_train:], y_val=y[n_train:],
        x_test=x_test, y_test=y_test,
    )  # fmt: skip

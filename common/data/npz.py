"""Byte-for-byte reproducible ``.npz`` files and content hashes.

``numpy.savez`` stamps each zip member with the current time, so rebuilding a dataset would
change its bytes and its DVC hash. ``save_npz`` writes the same arrays to the same bytes.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from common.files import replace_atomically

__all__ = ["file_md5", "load_npz", "save_npz"]

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest timestamp a zip file can hold


def save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` to ``path`` (an uncompressed .npz readable by ``np.load``),
    members in sorted order with a fixed timestamp."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]))

    return replace_atomically(path, write)  # a killed build never leaves a half-written file


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def file_md5(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

"""Reading a dataset file safely, and checking it holds what the registry declares.

Two failure modes are told apart, each with a message that names the file and what to do:

- the file is *corrupt* (empty, truncated, not an ``.npz``, or holding pickled objects, which
  are never unpickled): :func:`read_dataset_file` says so, compares the file's MD5 with the
  one DVC recorded for it (``data.dvc`` and the DVC cache) and says how to rebuild it;
- the file reads but its *content* is wrong (a split missing, wrong shape or dtype, NaN or
  inf, values outside the declared levels): :func:`validate_splits` names the split and the
  count of bad rows, instead of letting a NaN surface thousands of steps later as a
  "non-finite training loss".
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import yaml

from common.data.errors import DatasetError
from common.data.npz import file_md5, load_npz
from common.data_registry import DatasetInfo

__all__ = ["SPLITS", "dvc_recorded_md5", "read_dataset_file", "validate_splits"]

SPLITS = ("train", "val", "test")


def dvc_recorded_md5(path: Path) -> str | None:
    """The MD5 DVC recorded for ``path`` (a file inside a DVC-tracked folder such as
    ``data/``), read from the folder's ``.dvc`` file and the ``.dir`` manifest in the local
    DVC cache; None when either is not there."""
    path = Path(path).resolve()
    for folder in path.parents[:-1]:  # not the file system's root, which has no name
        dvc_file = folder.with_name(folder.name + ".dvc")
        if not dvc_file.is_file():
            continue
        try:
            digest = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
            cache = dvc_file.parent / ".dvc" / "cache" / "files" / "md5"
            manifest = json.loads((cache / digest[:2] / digest[2:]).read_text())
        except (OSError, ValueError, LookupError, TypeError, yaml.YAMLError):
            return None
        relpath = path.relative_to(folder).as_posix()
        return next((e["md5"] for e in manifest if e.get("relpath") == relpath), None)
    return None


def _corruption(exc: Exception) -> str:
    if isinstance(exc, ValueError) and "pickle" in str(exc):  # numpy's advice is unsafe: omit it
        return "it is not an .npz archive of plain arrays (pickled data is never loaded)"
    if isinstance(exc, EOFError):
        return "it is empty or truncated"
    if isinstance(exc, zipfile.BadZipFile | zlib.error):
        return f"its zip archive is damaged ({exc})"
    return f"it cannot be read ({type(exc).__name__}: {exc})"


def read_dataset_file(name: str, path: Path) -> dict[str, np.ndarray]:
    """The arrays in ``path``, or a :class:`DatasetError` that says the file is corrupt,
    whether it matches DVC's record, and how to rebuild it."""
    try:
        return load_npz(path)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        reason = _corruption(exc)
    actual, recorded = file_md5(path), dvc_recorded_md5(path)
    if recorded is None:
        provenance = f"Its MD5 is {actual}; DVC has no record of it in this checkout."
    elif recorded == actual:
        provenance = (f"Its MD5 {actual} is the one data.dvc records, so the DVC copy is bad "
                      "too: rebuild it rather than pulling it.")  # fmt: skip
    else:
        provenance = (f"Its MD5 {actual} differs from the {recorded} data.dvc records: the "
                      "file was damaged after it was tracked.")  # fmt: skip
    raise DatasetError(
        f"dataset {name!r}: {path} is corrupt: {reason}. {provenance} Rebuild it with "
        f"`python -m common.data prepare --datasets {name}` (or restore the tracked version "
        "with `dvc pull data.dvc`)."
    )


def validate_splits(name: str, path: Path, arrays: dict[str, np.ndarray], info: DatasetInfo):
    """Check every split against ``info``; return them, or raise :class:`DatasetError`."""
    fix = f"Rebuild it with `python -m common.data prepare --datasets {name}`."
    if missing := [f"x_{s}" for s in SPLITS if f"x_{s}" not in arrays]:
        raise DatasetError(
            f"dataset {name!r}: {path} lacks the arrays {missing} (it holds {sorted(arrays)}). "
            + fix
        )
    for split in SPLITS:
        x, where = arrays[f"x_{split}"], f"dataset {name!r}, split {split!r} of {path}"
        if x.ndim == 0 or x.shape[1:] != info.event_shape or len(x) == 0:
            raise DatasetError(
                f"{where} has shape {x.shape}; expected (N > 0, "
                f"{', '.join(map(str, info.event_shape))}). {fix}"
            )
        rows = x.reshape(len(x), -1)
        if info.num_levels is not None:
            if x.dtype != np.uint8:
                raise DatasetError(f"{where} has dtype {x.dtype}; expected uint8 levels. {fix}")
            bad, what = (rows >= info.num_levels).any(1), f"values above {info.num_levels - 1}"
        else:
            if not np.issubdtype(x.dtype, np.floating):
                raise DatasetError(f"{where} has dtype {x.dtype}; expected floats. {fix}")
            bad, what = ~np.isfinite(rows).all(1), "NaN or infinite values"
        if count := int(bad.sum()):
            raise DatasetError(
                f"{where}: {count} of {len(x)} rows have {what} (first at row "
                f"{int(np.argmax(bad))}). {fix}"
            )
        if info.num_classes is not None:
            _check_labels(arrays.get(f"y_{split}"), len(x), info.num_classes, where, fix)
    return arrays


def _check_labels(y: np.ndarray | None, n: int, num_classes: int, where: str, fix: str) -> None:
    if y is None:
        raise DatasetError(f"{where} has no labels (y_*); expected {n} in 0…{num_classes - 1}. "
                           + fix)  # fmt: skip
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where}: labels of shape {y.shape} and dtype {y.dtype}; expected "
                           f"({n},) integers. {fix}")  # fmt: skip
    if count := int(((y < 0) | (y >= num_classes)).sum()):
        raise DatasetError(f"{where}: {count} labels outside 0…{num_classes - 1}. {fix}")

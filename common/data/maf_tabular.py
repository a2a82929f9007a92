"""The MAF tabular bundle: POWER, GAS, HEPMASS, MINIBOONE and BSDS300, preprocessed as in the
MAF authors' loaders (Papamakarios, Pavlakou & Murray 2017, github.com/gpapamak/maf,
``datasets/*.py``), MD5-verified.

The bundle is one archive, ``data.tar.gz`` of Zenodo record 10.5281/zenodo.1161203 (about
1 GB), holding ``data/power/data.npy``, ``data/gas/ethylene_CO.pickle``,
``data/hepmass/1000_{train,test}.csv``, ``data/miniboone/data.npy`` and
``data/BSDS300/BSDS300.hdf5`` (and copies of MNIST and CIFAR-10, not used: those come from
their original hosts, :mod:`common.data.mnist` and :mod:`common.data.cifar10`). The five
files are extracted once into ``downloads/maf/`` and converted into ``data/maf/<name>.npz``
(float32 ``x_train``, ``x_val``, ``x_test``).

Preprocessing, per dataset, as the authors' code does it (their GAS and HEPMASS loaders call
``DataFrame.as_matrix``, gone from pandas since 1.0; the arithmetic is unchanged here):

========== ====== ================================================================ ==========================
dataset    dims   preprocessing                                                    train / val / test (paper)
========== ====== ================================================================ ==========================
POWER      6      shuffle (``RandomState(42)``), drop columns 3 and 1, add uniform     1,659,917 / 184,435 / 204,928
                  noise (gap 0.001, voltage 0.01, sub-metering 1, time 0), split
                  the last 10 % for test and 10 % of the rest for validation,
                  standardise by train + val (population std)
GAS        8      drop Meth, Eth, Time; drop, one at a time, the first column        852,174 / 94,685 / 105,206
                  correlated > 0.98 with another; standardise by all rows (sample
                  std); split as POWER (no shuffle)
HEPMASS    21     the signal class (label 1) of 1000_train/1000_test; the test      315,123 / 35,013 / 174,987
                  file's last column dropped; standardise by train (sample std);
                  drop features whose *smallest* value occurs more than 5 times in
                  train (the authors' "max_count"; test features picked by name);
                  validation = last 10 % of train
MINIBOONE  43     already cleaned in the bundle; split as POWER, standardise by     29,556 / 3,284 / 3,648
                  train + val (population std)
BSDS300    63     already preprocessed in the bundle (HDF5 ``train`` /               1,000,000 / 50,000 / 250,000
                  ``validation`` / ``test``)
========== ====== ================================================================ ==========================

The GAS pickle is read only after the archive's MD5 matched the published one: unpickling runs
code from the file.
"""

from __future__ import annotations

import pickle
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from common.data.download import fetch
from common.data.errors import DatasetError
from common.data.npz import save_npz

__all__ = [
    "MAF_TABULAR",
    "MAF_BUNDLE_MD5",
    "MAF_BUNDLE_URLS",
    "prepare_maf_tabular",
    "preprocess_gas",
    "preprocess_hepmass",
    "preprocess_miniboone",
    "preprocess_power",
]

MAF_BUNDLE_URLS = ["https://zenodo.org/record/1161203/files/data.tar.gz?download=1"]
MAF_BUNDLE_MD5 = "9b9c9b0375315ad270eba4ce80c093ab"

# dataset → the bundle's files it reads (paths inside the archive's ``data/`` folder)
MAF_TABULAR: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}

Splits = tuple[np.ndarray, np.ndarray, np.ndarray]


def _split_tail(data: np.ndarray) -> Splits:
    """The authors' split: the last 10 % is test, the last 10 % of the rest validation."""
    n_test = int(0.1 * len(data))
    rest, test = data[:-n_test], data[-n_test:]
    n_val = int(0.1 * len(rest))
    return rest[:-n_val], rest[-n_val:], test


def _standardise_by_train_val(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> Splits:
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)  # population std (numpy's default)
    return (train - mu) / s, (val - mu) / s, (test - mu) / s


def preprocess_power(data: np.ndarray) -> Splits:
    """POWER (UCI individual household electric power consumption), ``data`` ``(N, 8)``."""
    rng = np.random.RandomState(42)  # noqa: NPY002 (the authors' stream, draw for draw)
    data = np.array(data, dtype=np.float64)
    rng.shuffle(data)
    n = len(data)
    data = np.delete(np.delete(data, 3, axis=1), 1, axis=1)  # (N, 6)
    # The draws in the authors' order (voltage before gap), stacked in column order.
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    return _standardise_by_train_val(*_split_tail(data))


def preprocess_gas(frame) -> Splits:
    """GAS (UCI gas sensor array under dynamic gas mixtures, ethylene and CO), a pandas
    ``DataFrame`` with columns ``Time``, ``Meth``, ``Eth`` and the sensors."""
    data = frame.drop(columns=["Meth", "Eth", "Time"])

    def correlated_counts(d) -> np.ndarray:  # per column: columns correlated > 0.98, itself too
        return (d.corr() > 0.98).to_numpy().sum(axis=1)

    counts = correlated_counts(data)
    while np.any(counts > 1):
        data = data.drop(columns=data.columns[np.flatnonzero(counts > 1)[0]])
        counts = correlated_counts(data)
    data = (data - data.mean()) / data.std()  # pandas: sample std (ddof 1), all rows
    return _split_tail(data.to_numpy())


def preprocess_hepmass(train, test) -> Splits:
    """HEPMASS (UCI), ``train`` and ``test`` the pandas frames of ``1000_train.csv`` and
    ``1000_test.csv`` (first column the class label).

    The authors drop the test file's last column ("the data set is messed up!") and then index
    test features by their position in train; here the test's features are picked by *name*
    (train's kept columns), which is the same where the columns line up and an error naming the
    column where they do not, rather than silently misaligned features."""
    train = train[train[train.columns[0]] == 1].drop(columns=train.columns[0])
    test = test[test[test.columns[0]] == 1].drop(columns=test.columns[0])
    test = test.drop(columns=test.columns[-1])
    mu, s = train.mean(), train.std()  # pandas: sample std (ddof 1)
    train = (train - mu) / s
    # Features whose smallest value recurs more than 5 times: the authors' Counter sorted by
    # value, first entry (they call it max_count; it is the count of the minimum).
    kept = [c for c in train.columns if sorted(Counter(train[c].to_numpy()).items())[0][1] <= 5]
    missing = [c for c in kept if c not in test.columns]
    if missing:
        raise DatasetError(f"HEPMASS: the test file lacks the training features {missing}")
    test = (test[kept] - mu[kept]) / s[kept]
    train = train[kept].to_numpy()
    n_val = int(0.1 * len(train))
    return train[:-n_val], train[-n_val:], test.to_numpy()


def preprocess_miniboone(data: np.ndarray) -> Splits:
    """MINIBOONE (UCI particle identification), already cleaned in the bundle: ``(N, 43)``."""
    return _standardise_by_train_val(*_split_tail(np.asarray(data, dtype=np.float64)))


def _read_bsds300(path: Path) -> Splits:
    import h5py

    with h5py.File(path, "r") as f:
        return tuple(np.asarray(f[key]) for key in ("train", "validation", "test"))


def _convert(name: str, files: list[Path]) -> Splits:
    import pandas as pd

    if name == "power":
        return preprocess_power(np.load(files[0], allow_pickle=False))
    if name == "gas":  # a pickled DataFrame, read after the archive's MD5 was verified
        with open(files[0], "rb") as f:
            return preprocess_gas(pickle.load(f))
    if name == "hepmass":
        train, test = (pd.read_csv(p, index_col=False) for p in files)
        return preprocess_hepmass(train, test)
    if name == "miniboone":
        return preprocess_miniboone(np.load(files[0], allow_pickle=False))
    return _read_bsds300(files[0])


def _extract(tarball: Path, members: tuple[str, ...], into: Path) -> list[Path]:
    """The bundle's ``members`` (paths under its ``data/`` folder), extracted once into
    ``into`` and reused afterwards."""
    paths = [into / m for m in members]
    missing = [m for m, p in zip(members, paths, strict=True) if not p.exists()]
    if missing:
        with tarfile.open(tarball, "r:gz") as tar:
            by_suffix = {}
            for info in tar:  # one pass: reading a .tar.gz out of order decompresses it again
                for m in missing:
                    if info.isfile() and (info.name == m or info.name.endswith("/" + m)):
                        by_suffix[m] = info
                        tar.extract(info, into / "_tmp", filter="data")
            for m in missing:
                if m not in by_suffix:
                    raise DatasetError(
                        f"{tarball}: no member {m!r}; not the MAF data bundle (Zenodo 1161203)"
                    )
                (into / m).parent.mkdir(parents=True, exist_ok=True)
                (into / "_tmp" / by_suffix[m].name).replace(into / m)
        shutil.rmtree(into / "_tmp", ignore_errors=True)
    return paths


def prepare_maf_tabular(
    name: str,
    data_root: Path,
    download_root: Path,
    urls: list[str] | None = None,
    md5: str = MAF_BUNDLE_MD5,
) -> Path:
    """Fetch (or reuse) the verified bundle and write ``data_root/maf/<name>.npz``.
    ``urls`` and ``md5`` default to the published ones; tests pass their own."""
    if name not in MAF_TABULAR:
        raise KeyError(f"{name!r} is not in the MAF bundle; available: {sorted(MAF_TABULAR)}")
    folder = Path(download_root) / "maf"
    tarball = fetch(urls or MAF_BUNDLE_URLS, folder / "data.tar.gz", md5)
    train, val, test = _convert(name, _extract(tarball, MAF_TABULAR[name], folder))
    arrays = {"x_train": train, "x_val": val, "x_test": test}
    return save_npz(
        Path(data_root) / "maf" / f"{name}.npz",
        **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()},
    )

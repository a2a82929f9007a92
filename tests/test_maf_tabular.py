"""The MAF tabular bundle (common.data.maf_tabular): download with checksum, extraction, and
the authors' preprocessing of each dataset, on a tiny bundle written here in the real formats
(``.npy``, a pickled pandas DataFrame, CSV with a header, HDF5) and served from file://."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile

import h5py
import numpy as np
import pandas as pd
import pytest

from common.data import ChecksumError, DatasetError, load_dataset
from common.data.maf_tabular import MAF_TABULAR, prepare_maf_tabular, preprocess_hepmass

N_POWER, N_GAS, N_MINIBOONE = 300, 250, 120
HEPMASS_COLUMNS = ["# label", *(f"f{i}" for i in range(27)), "mass"]
HEPMASS_DISCRETE = [0, 4, 8, 12, 16, 20]  # features whose smallest value recurs (dropped)


def _hepmass_frame(rng, n: int) -> pd.DataFrame:
    x = rng.normal(size=(n, 29))
    x[:, 0] = rng.integers(0, 2, n)  # label: signal 1, background 0
    x[:8, 0] = 1
    for f in HEPMASS_DISCRETE:  # smallest value shared by 6 signal rows (> 5: dropped)
        x[:6, 1 + f] = x[:, 1 + f].min() - 1.0
    x[6:8, 2] = x[:, 2].min() - 1.0  # f1's smallest value twice: kept
    x[:, -1] = rng.choice([500.0, 750.0, 1000.0, 1250.0, 1500.0], n)  # the mass
    return pd.DataFrame(x, columns=HEPMASS_COLUMNS)


def write_bundle(path, drop: str | None = None) -> tuple[str, dict]:
    """A ``data.tar.gz`` with the bundle's five datasets under ``data/``; returns its MD5 and
    the raw contents written."""
    rng = np.random.default_rng(0)
    power = rng.normal(size=(N_POWER, 8)) * 3 + 10
    sensors = rng.normal(size=(N_GAS, 9))
    sensors[:, 3] = 2 * sensors[:, 1] + 0.01 * rng.normal(size=N_GAS)  # corr > 0.98
    gas = pd.DataFrame(sensors, columns=[f"s{i}" for i in range(9)])
    gas.insert(0, "Time", np.arange(N_GAS, dtype=float))
    gas.insert(1, "Meth", rng.normal(size=N_GAS))
    gas.insert(2, "Eth", rng.normal(size=N_GAS))
    hep_train, hep_test = _hepmass_frame(rng, 400), _hepmass_frame(rng, 200)
    miniboone = rng.normal(size=(N_MINIBOONE, 43)) * 5 - 2
    bsds = {k: rng.uniform(-0.5, 0.5, (n, 63)) for k, n in
            (("train", 50), ("validation", 10), ("test", 20))}  # fmt: skip
    hdf5 = io.BytesIO()
    with h5py.File(hdf5, "w") as f:
        for key, value in bsds.items():
            f[key] = value

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    files = {
        "power/data.npy": npy(power),
        "gas/ethylene_CO.pickle": pickle.dumps(gas),
        "hepmass/1000_train.csv": hep_train.to_csv(index=False).encode(),
        "hepmass/1000_test.csv": hep_test.to_csv(index=False).encode(),
        "miniboone/data.npy": npy(miniboone),
        "BSDS300/BSDS300.hdf5": hdf5.getvalue(),
        "mnist/mnist.pkl.gz": b"not used",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            if name == drop:
                continue
            info = tarfile.TarInfo(f"data/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    raw = {"power": power, "gas": gas, "hepmass": (hep_train, hep_test),
           "miniboone": miniboone, "bsds300": bsds}  # fmt: skip
    return hashlib.md5(path.read_bytes()).hexdigest(), raw


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Every dataset prepared from one tiny bundle (a dead mirror first): the data root, the
    raw contents, and the loaded datasets."""
    tmp = tmp_path_factory.mktemp("maf")
    tarball = tmp / "mirror" / "data.tar.gz"
    tarball.parent.mkdir()
    md5, raw = write_bundle(tarball)
    urls = ["http://127.0.0.1:9/data.tar.gz", tarball.as_uri()]
    for name in MAF_TABULAR:
        prepare_maf_tabular(name, tmp / "data", tmp / "dl", urls, md5)
    return raw, {name: load_dataset(name, tmp / "data") for name in MAF_TABULAR}


def _splits(ds):
    return [s.numpy().astype(np.float64) for s in (ds.x_train, ds.x_val, ds.x_test)]


def test_split_sizes_follow_the_authors_rule(bundle):
    """Last 10 % test, last 10 % of the rest validation (POWER, GAS, MINIBOONE); HEPMASS's
    test is its own file; BSDS300's splits are the file's."""
    raw, data = bundle
    for name, n in (("power", N_POWER), ("gas", N_GAS), ("miniboone", N_MINIBOONE)):
        n_test = int(0.1 * n)
        n_val = int(0.1 * (n - n_test))
        sizes = tuple(len(s) for s in _splits(data[name]))
        assert sizes == (n - n_test - n_val, n_val, n_test), name
    assert [len(s) for s in _splits(data["bsds300"])] == [50, 10, 20]
    assert all(data[n].x_train.dtype.is_floating_point for n in MAF_TABULAR)


def test_power_matches_the_authors_stream_and_the_time_column_is_noise_free(bundle):
    """The authors' loader, draw for draw: RandomState(42) shuffles the rows, columns 3 and 1
    go, then uniform noise is drawn for voltage (width 0.01), the first column (0.001) and the
    three sub-meterings (1), in that order; time gets none. Standardised by train + val
    (population std). A swapped draw, a missing shuffle or a ddof of 1 fails here."""
    raw, data = bundle
    rng = np.random.RandomState(42)  # noqa: NPY002
    x = raw["power"].copy()
    rng.shuffle(x)
    x = np.delete(np.delete(x, 3, axis=1), 1, axis=1)
    voltage, gap, sm = (
        0.01 * rng.rand(N_POWER, 1),
        0.001 * rng.rand(N_POWER, 1),
        rng.rand(N_POWER, 3),
    )
    x = x + np.hstack((gap, voltage, sm, np.zeros((N_POWER, 1))))
    n_trval = N_POWER - int(0.1 * N_POWER)
    expected = (x - x[:n_trval].mean(0)) / x[:n_trval].std(0)
    got = np.vstack(_splits(data["power"]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    time = raw["power"].copy()
    np.random.RandomState(42).shuffle(time)  # noqa: NPY002
    time = time[:, -1]
    np.testing.assert_allclose(got[:, -1], (time - time[:n_trval].mean()) / time[:n_trval].std(),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_gas_drops_the_first_correlated_column_and_standardises_all_rows(bundle):
    raw, data = bundle
    frame = raw["gas"]
    sensors = frame.drop(columns=["Time", "Meth", "Eth", "s1"]).to_numpy()  # s1 ~ s3: s1 goes
    expected = (sensors - sensors.mean(0)) / sensors.std(0, ddof=1)  # pandas' sample std
    got = np.vstack(_splits(data["gas"]))  # no shuffle: the splits concatenate to the file
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_hepmass_signal_rows_dropped_features_and_test_features_by_name(bundle):
    raw, data = bundle
    train_frame, test_frame = raw["hepmass"]
    keep = [f"f{i}" for i in range(27) if i not in HEPMASS_DISCRETE]  # and the mass goes
    train = train_frame[train_frame["# label"] == 1][keep].to_numpy()
    # The test file loses its last column (the mass); its features are the train's kept ones.
    test = test_frame[test_frame["# label"] == 1][keep].to_numpy()
    full = train_frame[train_frame["# label"] == 1].drop(columns="# label")
    mu, s = full.mean()[keep].to_numpy(), full.std()[keep].to_numpy()  # train, sample std
    got_train, got_val, got_test = _splits(data["hepmass"])
    np.testing.assert_allclose(np.vstack((got_train, got_val)), (train - mu) / s, rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(got_test, (test - mu) / s, rtol=1e-5, atol=1e-5)
    assert len(got_val) == int(0.1 * len(train))
    # A test file without one of the kept features is an error naming it, not a silent shift.
    with pytest.raises(DatasetError, match=r"lacks the training features \['f1'\]"):
        preprocess_hepmass(train_frame, test_frame.drop(columns="f1"))


def test_miniboone_and_bsds300_values(bundle):
    raw, data = bundle
    x = raw["miniboone"]
    n_test = int(0.1 * len(x))
    n_val = int(0.1 * (len(x) - n_test))
    trval = x[: len(x) - n_test]
    expected = (x - trval.mean(0)) / trval.std(0)
    np.testing.assert_allclose(np.vstack(_splits(data["miniboone"])), expected, rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    assert n_val == len(data["miniboone"].x_val)
    for got, key in zip(_splits(data["bsds300"]), ("train", "validation", "test"), strict=True):
        np.testing.assert_allclose(got, raw["bsds300"][key], rtol=1e-6)


def test_bundle_checksum_and_missing_member(tmp_path):
    tarball = tmp_path / "mirror" / "data.tar.gz"
    tarball.parent.mkdir()
    write_bundle(tarball)
    with pytest.raises(ChecksumError, match="does not match the published"):
        prepare_maf_tabular("power", tmp_path / "data", tmp_path / "dl", [tarball.as_uri()],
                            "0" * 32)  # fmt: skip
    assert (tmp_path / "dl" / "maf" / "data.tar.gz.corrupt").exists()
    assert not (tmp_path / "data" / "maf" / "power.npz").exists()

    partial = tmp_path / "partial" / "data.tar.gz"
    partial.parent.mkdir()
    md5, _ = write_bundle(partial, drop="gas/ethylene_CO.pickle")
    with pytest.raises(DatasetError, match="no member 'gas/ethylene_CO.pickle'"):
        prepare_maf_tabular("gas", tmp_path / "data", tmp_path / "dl2", [partial.as_uri()], md5)
    with pytest.raises(KeyError, match="not in the MAF bundle"):
        prepare_maf_tabular("mnist", tmp_path / "data", tmp_path / "dl2", [partial.as_uri()], md5)

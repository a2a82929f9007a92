"""Datasets: deterministic builds, splits, toy generators, MNIST download + IDX parsing."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct

import numpy as np
import pytest

from common.data import (
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    build_offline,
    load_dataset,
)
from common.data.mnist import prepare_mnist, read_idx
from common.data.npz import file_md5, load_npz, save_npz
from common.data.toy import TOY_DATASETS, sample_toy
from common.data.validate import dvc_recorded_md5


def test_offline_build_is_byte_identical(data_root, tmp_path):
    first = {p.relative_to(data_root): file_md5(p) for p in data_root.rglob("*.npz")}
    build_offline(tmp_path)
    second = {p.relative_to(tmp_path): file_md5(p) for p in tmp_path.rglob("*.npz")}
    assert first == second and len(first) == 2 + len(TOY_DATASETS)  # digits, photo patches


def test_digits_splits(data_root):
    ds = load_dataset("digits", data_root)
    assert ds.event_shape == (1, 8, 8) and ds.num_levels == 17 and ds.num_dims == 64
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (1437, 180, 180)
    allx = np.concatenate([ds.x_train, ds.x_val, ds.x_test]).reshape(1797, -1)
    assert allx.min() == 0 and allx.max() == 16 and allx.dtype == np.uint8
    # The split is a permutation of the bundled set: every image is used exactly once.
    from sklearn.datasets import load_digits

    ref = load_digits().images.reshape(1797, -1).astype(np.uint8)
    assert sorted(map(bytes, allx)) == sorted(map(bytes, ref))


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_generators(name, data_root):
    x = sample_toy(name, 1001, seed=5)
    assert x.shape == (1001, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.array_equal(x, sample_toy(name, 1001, seed=5))
    assert not np.array_equal(x, sample_toy(name, 1001, seed=6))
    assert 0.3 < x.std() < 5  # on the plotting scale of FFJORD's figures
    ds = load_dataset(name, data_root)
    assert ds.num_levels is None and not np.array_equal(ds.x_val, ds.x_test)


def test_registry_and_generators_agree():
    from common.data.maf_tabular import MAF_TABULAR
    from common.data_registry import DATASETS, TOY_NAMES

    assert tuple(TOY_DATASETS) == TOY_NAMES
    continuous = {n for n, info in DATASETS.items() if info.num_levels is None}
    assert continuous == {*TOY_NAMES, "photo_patches", *MAF_TABULAR}
    # every downloaded set has a downloader, every bundle set is registered as a download
    assert {n for n, info in DATASETS.items() if info.download} == {
        "mnist",
        "cifar10",
        *MAF_TABULAR,
    }


def test_unknown_toy_and_missing_dataset(tmp_path):
    with pytest.raises(KeyError, match="available"):
        sample_toy("spiral3", 10, 0)
    with pytest.raises(DatasetNotFoundError, match="common.data prepare.*dvc pull data.dvc"):
        load_dataset("digits", tmp_path)
    # a downloaded set names its raw files' .dvc files: a remote that holds them serves them
    with pytest.raises(DatasetNotFoundError, match="dvc pull downloads/maf/data.tar.gz.dvc`"):
        load_dataset("power", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="internet") as err:
        load_dataset("mnist", tmp_path)
    assert "downloads/mnist/t10k-labels-idx1-ubyte.gz.dvc" in str(err.value)


# --- MNIST: tiny files in the real IDX format, served from file:// "mirrors" ---------------


def write_idx(path, array: np.ndarray) -> str:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_mnist(tmp_path):
    rng = np.random.default_rng(0)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (12, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 12),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 3),
    }
    files = {name: write_idx(mirror / name, a) for name, a in arrays.items()}
    return mirror, files, arrays


def test_read_idx_round_trip(tiny_mnist):
    mirror, _, arrays = tiny_mnist
    got = read_idx(mirror / "train-images-idx3-ubyte.gz")
    assert got.shape == (12, 28, 28) and np.array_equal(got, arrays["train-images-idx3-ubyte.gz"])


def test_read_idx_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)


def test_prepare_mnist_downloads_verifies_and_splits(tiny_mnist, tmp_path):
    mirror, files, arrays = tiny_mnist
    dead = "http://127.0.0.1:9/"  # nothing listens there: the loader falls through to the next
    prepare_mnist(tmp_path / "data", tmp_path / "dl", [dead, mirror.as_uri() + "/"], files, n_val=2)
    ds = load_dataset("mnist", tmp_path / "data")
    assert ds.event_shape == (1, 28, 28) and ds.num_levels == 256
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (10, 2, 3)
    assert np.array_equal(ds.x_val.numpy()[:, 0], arrays["train-images-idx3-ubyte.gz"][10:])


def test_checksum_mismatch_stops_and_keeps_the_file(tiny_mnist, tmp_path):
    mirror, files, _ = tiny_mnist
    files = dict(files, **{"t10k-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(ChecksumError, match="does not match the published"):
        prepare_mnist(tmp_path / "data", tmp_path / "dl", [mirror.as_uri() + "/"], files, 2)
    kept = tmp_path / "dl" / "mnist" / "t10k-labels-idx1-ubyte.gz.corrupt"
    assert kept.exists() and not (tmp_path / "data" / "mnist.npz").exists()


def test_offline_download_says_what_to_do(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="place it at"):
        prepare_mnist(tmp_path / "data", tmp_path / "dl", ["http://127.0.0.1:9/"])


# --- CIFAR-10: a tiny tarball in the real "python version" format, written here ----------


def write_cifar_tarball(path, n_per_batch: int = 3, n_test: int = 2, drop: str | None = None):
    """Five training batches and a test batch: Python-2-style pickles (bytes keys) of
    ``{b'data': (N, 3072) uint8, b'labels': [...]}`` inside ``cifar-10-batches-py/``."""
    import io
    import pickle
    import tarfile

    rng = np.random.default_rng(1)
    batches = {f"data_batch_{i}": n_per_batch for i in range(1, 6)} | {"test_batch": n_test}
    images = {}
    with tarfile.open(path, "w:gz") as tar:
        for name, n in batches.items():
            if name == drop:
                continue
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            images[name] = data
            payload = pickle.dumps({b"data": data, b"labels": list(range(n))}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return hashlib.md5(path.read_bytes()).hexdigest(), images


def test_prepare_cifar10_downloads_verifies_and_splits(tmp_path):
    from common.data.cifar10 import prepare_cifar10

    tarball = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    tarball.parent.mkdir()
    md5, images = write_cifar_tarball(tarball)
    dead = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    prepare_cifar10(tmp_path / "data", tmp_path / "dl", [dead, tarball.as_uri()], md5, n_val=4)
    ds = load_dataset("cifar10", tmp_path / "data")
    assert ds.event_shape == (3, 32, 32) and ds.num_levels == 256 and ds.num_dims == 3072
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (11, 4, 2)
    # Rows are 1024 red, then green, then blue values, each plane row-major.
    first = images["data_batch_1"][0]
    assert np.array_equal(ds.x_train[0, 1].numpy().ravel(), first[1024:2048])
    assert np.array_equal(ds.x_test.numpy().reshape(2, -1), images["test_batch"])
    assert np.array_equal(ds.x_val[-1].numpy().ravel(), images["data_batch_5"][-1])


def test_cifar10_checksum_mismatch_and_wrong_archive(tmp_path):
    from common.data.cifar10 import prepare_cifar10

    tarball = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tarball(tarball)
    with pytest.raises(ChecksumError, match="does not match the published"):
        prepare_cifar10(tmp_path / "data", tmp_path / "dl", [tarball.as_uri()], "0" * 32)
    assert (tmp_path / "dl" / "cifar-10-python.tar.gz.corrupt").exists()

    partial = tmp_path / "partial" / "cifar-10-python.tar.gz"
    partial.parent.mkdir()
    md5, _ = write_cifar_tarball(partial, drop="test_batch")
    with pytest.raises(ValueError, match="no member 'cifar-10-batches-py/test_batch'"):
        prepare_cifar10(tmp_path / "data", tmp_path / "dl2", [partial.as_uri()], md5, n_val=2)
    assert not (tmp_path / "data" / "cifar10.npz").exists()


# --- validation at load: corrupt files and bad content name the file, the split, the rows ---


def _copy_digits(data_root, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "digits.npz").write_bytes((data_root / "digits.npz").read_bytes())
    return root, load_npz(root / "digits.npz")


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b"", "empty or truncated"),
        (lambda b: b[: len(b) // 2], "zip archive is damaged"),
        (lambda b: b"\x80\x04not a zip at all", "pickled data is never loaded"),
        (lambda b: _flip(b, 100), "Header does not contain"),
        (lambda b: _flip(b, len(b) // 3), "Bad CRC-32"),
    ],
    ids=["empty", "truncated", "not-a-zip", "flipped-header-byte", "flipped-data-byte"],
)
def test_a_corrupt_file_is_one_clear_error(data_root, tmp_path, damage, reason):
    root, _ = _copy_digits(data_root, tmp_path)
    path = root / "digits.npz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetError) as info:
        load_dataset("digits", root)
    message = str(info.value)
    assert str(path) in message and "is corrupt" in message and reason in message
    assert "python -m common.data prepare --datasets digits" in message
    assert "allow_pickle" not in message  # numpy's advice would be unsafe


def test_a_corrupt_file_is_compared_with_the_dvc_record(data_root, tmp_path):
    """data.dvc names the folder's manifest in the DVC cache; the manifest gives the file's
    MD5. The message says whether the damaged file still matches it."""
    root, _ = _copy_digits(data_root, tmp_path)
    good = file_md5(root / "digits.npz")
    manifest = json.dumps([{"md5": good, "relpath": "digits.npz"}]).encode()
    digest = hashlib.md5(manifest).hexdigest() + ".dir"
    cache = tmp_path / ".dvc" / "cache" / "files" / "md5" / digest[:2]
    cache.mkdir(parents=True)
    (cache / digest[2:]).write_bytes(manifest)
    (tmp_path / "data.dvc").write_text(f"outs:\n- md5: {digest}\n  path: data\n")
    assert dvc_recorded_md5(root / "digits.npz") == good
    (root / "digits.npz").write_bytes(b"")
    with pytest.raises(DatasetError, match=f"differs from the {good} data.dvc records"):
        load_dataset("digits", root)


def _corrupt_split(root, arrays, **changes):
    save_npz(root / "digits.npz", **(arrays | changes))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {"x_val": np.where(np.arange(len(a["x_val"]))[:, None, None, None] < 3,
                                      np.uint8(17), a["x_val"])},
         r"split 'val' .*: 3 of 180 rows have values above 16 \(first at row 0\)"),
        (lambda a: {"x_test": a["x_test"][:, :, :4]},
         r"split 'test' .* has shape \(180, 1, 4, 8\); expected \(N > 0, 1, 8, 8\)"),
        (lambda a: {"x_train": a["x_train"].astype(np.float32)},
         r"split 'train' .* has dtype float32; expected uint8"),
    ],
    ids=["out-of-levels", "shape", "dtype"],
)  # fmt: skip
def test_bad_image_content_names_the_split_and_the_rows(data_root, tmp_path, change, message):
    root, arrays = _copy_digits(data_root, tmp_path)
    _corrupt_split(root, arrays, **change(arrays))
    with pytest.raises(DatasetError, match=message):
        load_dataset("digits", root)


def test_missing_split_is_named(data_root, tmp_path):
    root, arrays = _copy_digits(data_root, tmp_path)
    save_npz(root / "digits.npz", **{k: v for k, v in arrays.items() if k != "x_test"})
    with pytest.raises(DatasetError, match=r"lacks the arrays \['x_test'\]"):
        load_dataset("digits", root)


def test_nan_in_a_toy_split_is_a_data_error_not_a_learning_rate_problem(tmp_path):
    from common.data.toy import make_toy_splits

    arrays = make_toy_splits("moons")
    arrays["x_test"][[4, 9], 1] = [np.nan, np.inf]
    save_npz(tmp_path / "toy" / "moons.npz", **arrays)
    with pytest.raises(DatasetError, match=r"split 'test' .*: 2 of \d+ rows have NaN or inf"):
        load_dataset("moons", tmp_path)

"""DVC as the README describes it: raw downloads tracked by hand-written .dvc files with the
published MD5s, served by `dvc pull` once stashed and pushed, and derived data that never
changes the committed data.dvc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.data.cifar10 import CIFAR10_MD5
from common.data.dvc_store import committed_md5, stash
from common.data.errors import ChecksumError
from common.data.maf_tabular import MAF_BUNDLE_MD5
from common.data.mnist import MNIST_FILES
from common.data_registry import DATASETS, raw_paths

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, DVC_NO_ANALYTICS="1")


def dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def new_repo(path: Path, remote: Path) -> Path:
    """A git + DVC repository at ``path`` with ``remote`` as its default remote, and the
    project's .dvcignore."""
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    assert dvc(path, "init", "-q").returncode == 0
    assert dvc(path, "remote", "add", "-d", "storage", str(remote)).returncode == 0
    shutil.copy(REPO / ".dvcignore", path / ".dvcignore")
    return path


def test_raw_dvc_files_record_the_published_checksums():
    """Each downloaded dataset's raw files have a committed .dvc file whose MD5 is the one the
    download code verifies, and every such .dvc file belongs to a dataset."""
    published = {f"mnist/{name}": md5 for name, md5 in MNIST_FILES.items()}
    published |= {"cifar-10-python.tar.gz": CIFAR10_MD5, "maf/data.tar.gz": MAF_BUNDLE_MD5}
    raws = {p for name in DATASETS for p in raw_paths(name, REPO / "downloads")}
    assert {p.relative_to(REPO / "downloads").as_posix() for p in raws} == set(published)
    for raw in raws:
        assert committed_md5(raw) == published[raw.relative_to(REPO / "downloads").as_posix()]
    committed = set((REPO / "downloads").rglob("*.dvc"))
    assert committed == {raw.with_name(raw.name + ".dvc") for raw in raws}


def test_a_stashed_download_is_pulled_into_a_fresh_clone(tmp_path):
    """stash + push leave the committed .dvc file byte for byte unchanged (`dvc add` would add
    a size and dirty the repository), and a fresh clone's `dvc pull` then serves the file."""
    remote = tmp_path / "remote"
    origin = new_repo(tmp_path / "origin", remote)
    raw = origin / "downloads" / "bundle.tar.gz"
    raw.parent.mkdir()
    raw.write_bytes(os.urandom(3000))
    md5 = subprocess.run(["md5sum", raw], capture_output=True, text=True).stdout.split()[0]
    dvc_text = f"outs:\n- md5: {md5}\n  hash: md5\n  path: bundle.tar.gz\n"
    (origin / "downloads" / "bundle.tar.gz.dvc").write_text(dvc_text)

    cached = stash(raw, origin)
    assert cached.read_bytes() == raw.read_bytes() and cached.stat().st_mode & 0o222 == 0
    assert dvc(origin, "push", "-q", "downloads/bundle.tar.gz.dvc").returncode == 0
    assert (origin / "downloads" / "bundle.tar.gz.dvc").read_text() == dvc_text

    fresh = new_repo(tmp_path / "fresh", remote)
    (fresh / "downloads").mkdir()
    (fresh / "downloads" / "bundle.tar.gz.dvc").write_text(dvc_text)
    assert dvc(fresh, "pull", "-q", "downloads/bundle.tar.gz.dvc").returncode == 0
    assert (fresh / "downloads" / "bundle.tar.gz").read_bytes() == raw.read_bytes()


def test_stash_refuses_a_file_that_does_not_match_its_dvc_record(tmp_path):
    origin = new_repo(tmp_path / "origin", tmp_path / "remote")
    raw = origin / "x.bin"
    raw.write_bytes(b"not the published bytes")
    (origin / "x.bin.dvc").write_text(f"outs:\n- md5: {'0' * 32}\n  hash: md5\n  path: x.bin\n")
    with pytest.raises(ChecksumError, match="does not match"):
        stash(raw, origin)
    assert (origin / "x.bin.corrupt").exists()  # kept, not deleted


def test_derived_downloads_never_change_data_dvc(tmp_path):
    """The project's .dvcignore keeps data/<downloaded set>.npz out of data.dvc: adding them
    and re-running `dvc add data` leaves data.dvc as it was, and `dvc status` clean."""
    repo = new_repo(tmp_path / "repo", tmp_path / "remote")
    (repo / "data" / "toy").mkdir(parents=True)
    (repo / "data" / "digits.npz").write_bytes(b"offline")
    (repo / "data" / "toy" / "moons.npz").write_bytes(b"offline too")
    assert dvc(repo, "add", "-q", "data").returncode == 0
    before = (repo / "data.dvc").read_text()
    for name, info in DATASETS.items():
        if info.download:
            target = repo / "data" / info.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(name.encode())
    status = dvc(repo, "status", "data.dvc")
    assert status.returncode == 0 and "modified" not in status.stdout, status.stdout
    assert dvc(repo, "add", "-q", "data").returncode == 0
    assert (repo / "data.dvc").read_text() == before
    assert yaml.safe_load(before)["outs"][0]["nfiles"] == 2

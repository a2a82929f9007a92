"""Raw downloads into DVC's cache, so that ``dvc push`` can send them to the remote.

Each raw download ``downloads/<raw>`` has a committed ``downloads/<raw>.dvc`` written by hand
from the *published* MD5 (MNIST's, CIFAR-10's, the MAF bundle's): a fresh clone then knows
what to ``dvc pull`` before anyone downloaded anything. ``dvc add`` or ``dvc commit`` would
cache the file too, but they rewrite the ``.dvc`` file (adding the size, which not every source
publishes), so a paper-scale run would leave the repository dirty. :func:`stash` does the one
part of ``dvc commit`` we need: it verifies the file against the committed MD5 and copies it to
the cache path DVC 3 derives from that MD5 (``<cache>/files/md5/<2 hex>/<30 hex>``), read-only
as DVC keeps it. ``dvc push downloads/<raw>.dvc`` then uploads it, ``dvc pull`` serves it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from common.data.download import verify_md5
from common.files import replace_atomically

__all__ = ["committed_md5", "stash"]


def committed_md5(raw: Path) -> str:
    """The MD5 that ``raw``'s committed ``.dvc`` file records."""
    dvc_file = raw.with_name(raw.name + ".dvc")
    if not dvc_file.exists():
        raise FileNotFoundError(f"{raw} has no {dvc_file.name} beside it to say its MD5")
    (out,) = yaml.safe_load(dvc_file.read_text())["outs"]
    return out["md5"]


def stash(raw: Path, repo_root: str | Path = ".") -> Path:
    """Copy the verified file ``raw`` into the DVC cache of the repository at ``repo_root``
    under the MD5 of its committed ``.dvc`` file; return the cache path. A mismatching file
    raises :class:`~common.data.errors.ChecksumError` (and is kept as ``*.corrupt``)."""
    from dvc.repo import Repo  # seconds to import: only the data rule needs it

    md5 = committed_md5(raw)
    verify_md5(raw, md5)
    with Repo(str(repo_root)) as repo:
        cache = Path(repo.cache.local.path) / md5[:2] / md5[2:]
    if not cache.exists():
        replace_atomically(cache, lambda tmp: shutil.copyfile(raw, tmp))
        os.chmod(cache, 0o444)  # DVC's cache files are read-only
    return cache

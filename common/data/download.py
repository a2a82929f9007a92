"""Downloads with checksum verification, a progress bar, and clear offline errors."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from common.data.errors import ChecksumError, DatasetNotFoundError
from common.data.npz import file_md5

__all__ = ["fetch", "verify_md5"]


def verify_md5(path: Path, md5: str) -> None:
    """Raise ``ChecksumError`` if ``path``'s MD5 is not ``md5``. The file is kept (renamed to
    ``*.corrupt``) so nothing is lost and it can be inspected."""
    actual = file_md5(path)
    if actual != md5:
        corrupt = path.with_name(path.name + ".corrupt")
        path.replace(corrupt)
        raise ChecksumError(
            f"{path.name}: MD5 {actual} does not match the published {md5}. The file was moved "
            f"to {corrupt}; the download was probably truncated or the mirror serves a different "
            "file. Delete it and run the download again, or place a verified copy at "
            f"{path}."
        )


def fetch(urls: list[str], dest: Path, md5: str) -> Path:
    """Return ``dest`` after verifying its MD5, downloading it first from the first of ``urls``
    that answers if it is not there yet."""
    dest = Path(dest)
    if dest.exists():
        verify_md5(dest, md5)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        part = dest.with_name(dest.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                    while block := response.read(1 << 16):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {exc}")
            continue
        shutil.move(part, dest)
        verify_md5(dest, md5)
        return dest
    raise DatasetNotFoundError(
        f"could not download {dest.name} (no network?). Tried:\n  "
        + "\n  ".join(errors)
        + f"\nDownload it on a connected machine and place it at {dest} (MD5 {md5}), "
        "or use the offline `cpu` profile, which needs no download."
    )

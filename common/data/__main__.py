"""``python -m common.data prepare [--root data] [--datasets mnist ...] [--no-offline]``
``python -m common.data stash --datasets mnist ...``

``prepare`` builds the offline datasets (all of them: they are small and deterministic; not
with ``--no-offline``) and downloads the requested online ones, verifying checksums; raw
files already in ``downloads/`` (e.g. from ``dvc pull``) are verified and reused. ``stash``
copies the requested datasets' verified raw downloads into the DVC cache under their committed
``.dvc`` files' MD5s, ready for ``dvc push`` (:mod:`common.data.dvc_store`)."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from common.data import (
    DATASETS,
    MAF_TABULAR,
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    build_offline,
    prepare_cifar10,
    prepare_maf_tabular,
    prepare_mnist,
)
from common.data_registry import DOWNLOADS, raw_paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build offline datasets, download online ones")
    prep.add_argument("--root", type=Path, default=Path("data"))
    prep.add_argument("--downloads", type=Path, default=DOWNLOADS)
    prep.add_argument("--datasets", nargs="*", default=[], choices=sorted(DATASETS))
    prep.add_argument("--no-offline", dest="offline", action="store_false",
                      help="do not (re)build the offline datasets")  # fmt: skip
    stash_cmd = sub.add_parser("stash", help="put verified raw downloads into the DVC cache")
    stash_cmd.add_argument("--downloads", type=Path, default=DOWNLOADS)
    stash_cmd.add_argument("--datasets", nargs="+", required=True, choices=sorted(DATASETS))
    args = parser.parse_args(argv)
    if args.command == "stash":
        from common.data.dvc_store import stash

        for raw in sorted({p for name in args.datasets for p in raw_paths(name, args.downloads)}):
            print(f"cached {raw} as {stash(raw)}")
        return
    for path in build_offline(args.root) if args.offline else []:
        print(f"built {path}")
    downloaders = {"mnist": prepare_mnist, "cifar10": prepare_cifar10}
    downloaders |= {name: partial(prepare_maf_tabular, name) for name in MAF_TABULAR}
    for name in args.datasets:
        if name not in downloaders:
            continue  # offline sets were built above
        try:
            print(f"built {downloaders[name](args.root, args.downloads)}")
        except (DatasetNotFoundError, ChecksumError, DatasetError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()

"""``python -m common.data prepare [--root data] [--datasets digits mnist ...]``

Builds the offline datasets (always all of them: they are small and deterministic) and
downloads the requested online ones, verifying checksums."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from common.data import (
    DATASETS,
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    MAF_TABULAR,
    build_offline,
    prepare_maf_tabular,
    prepare_cifar10,
    prepare_mnist,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build offline datasets, download online ones")
    prep.add_argument("--root", type=Path, default=Path("data"))
    prep.add_argument("--downloads", type=Path, default=Path("downloads"))
    prep.add_argument("--datasets", nargs="*", default=[], choices=sorted(DATASETS))
    args = parser.parse_args(argv)
    for path in build_offline(args.root):
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

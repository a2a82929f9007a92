"""Which datasets exist, where their files live under ``data/``, and which need a download.

Dependency-free on purpose: the Snakefile imports it at every invocation (``common.data``
pulls in torch and scikit-learn, seconds to import).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

__all__ = ["DATASETS", "DOWNLOADS", "TOY_NAMES", "DatasetInfo", "dataset_path", "raw_paths"]

# FFJORD's 2-D toy sets (generators in common.data.toy).
TOY_NAMES = (
    "swissroll", "8gaussians", "pinwheel", "circles", "moons", "2spirals", "checkerboard", "rings",
)  # fmt: skip


class DatasetInfo(NamedTuple):
    """What a dataset file must hold: ``x_train``, ``x_val`` and ``x_test`` of shape
    ``(N, *event_shape)``; uint8 levels ``0 … num_levels - 1`` for discrete data, finite
    float32 values for continuous data (``num_levels`` None); for labelled data (``num_classes``
    set), ``y_<split>`` of shape ``(N,)`` in ``0 … num_classes - 1``. Checked at every load.

    ``raw`` lists the downloaded files it is derived from, under ``downloads/``: each is
    tracked by its own committed ``downloads/<raw>.dvc`` (the published MD5), so that
    ``dvc pull`` serves it where a remote holds it. Empty for the offline sets, which are
    built deterministically and tracked together by the top-level ``data.dvc``."""

    file: str  # path under the data root
    num_levels: int | None  # grey levels of discrete data; None for continuous data
    event_shape: tuple[int, ...]  # the shape of one example
    num_classes: int | None = None  # labelled data: y_<split> in 0 … num_classes − 1
    raw: tuple[str, ...] = ()  # downloaded source files under downloads/; () if built offline

    @property
    def download(self) -> bool:
        """Whether the dataset needs the internet (or a DVC remote that holds its raw files)."""
        return bool(self.raw)


MNIST_RAW = tuple(
    f"mnist/{kind}-{part}.gz"
    for kind in ("train", "t10k")
    for part in ("images-idx3-ubyte", "labels-idx1-ubyte")
)
MAF_RAW = ("maf/data.tar.gz",)  # one bundle holds the five tables

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits.npz", 17, (1, 8, 8), num_classes=10),
    "mnist": DatasetInfo("mnist.npz", 256, (1, 28, 28), num_classes=10, raw=MNIST_RAW),
    "cifar10": DatasetInfo(
        "cifar10.npz", 256, (3, 32, 32), num_classes=10, raw=("cifar-10-python.tar.gz",)
    ),
    # 8×8 grey patches of scikit-learn's two sample photographs in the BSDS300 protocol of the
    # MAF papers (common.data.patches): not BSDS300
    "photo_patches": DatasetInfo("photo_patches.npz", None, (63,)),
    # The MAF tabular bundle (common.data.maf_tabular): the authors' preprocessing, float32
    "power": DatasetInfo("maf/power.npz", None, (6,), raw=MAF_RAW),
    "gas": DatasetInfo("maf/gas.npz", None, (8,), raw=MAF_RAW),
    "hepmass": DatasetInfo("maf/hepmass.npz", None, (21,), raw=MAF_RAW),
    "miniboone": DatasetInfo("maf/miniboone.npz", None, (43,), raw=MAF_RAW),
    "bsds300": DatasetInfo("maf/bsds300.npz", None, (63,), raw=MAF_RAW),
    **{name: DatasetInfo(f"toy/{name}.npz", None, (2,)) for name in TOY_NAMES},
}


def dataset_path(name: str, root: str | Path = "data") -> Path:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
    return Path(root) / DATASETS[name].file


DOWNLOADS = Path("downloads")  # where raw downloads live (each beside its .dvc file)


def raw_paths(name: str, downloads: str | Path = DOWNLOADS) -> list[Path]:
    """The downloaded files ``name`` is built from (none for an offline set)."""
    return [Path(downloads) / raw for raw in DATASETS[name].raw]

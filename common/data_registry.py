"""Which datasets exist, where their files live under ``data/``, and which need a download.

Dependency-free on purpose: the Snakefile imports it at every invocation (``common.data``
pulls in torch and scikit-learn, seconds to import).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

__all__ = ["DATASETS", "TOY_NAMES", "DatasetInfo", "dataset_path"]

# FFJORD's 2-D toy sets (generators in common.data.toy).
TOY_NAMES = (
    "swissroll", "8gaussians", "pinwheel", "circles", "moons", "2spirals", "checkerboard", "rings",
)  # fmt: skip


class DatasetInfo(NamedTuple):
    """What a dataset file must hold: ``x_train``, ``x_val`` and ``x_test`` of shape
    ``(N, *event_shape)``; uint8 levels ``0 … num_levels - 1`` for discrete data, finite
    float32 values for continuous data (``num_levels`` None); for labelled data (``num_classes``
    set), ``y_<split>`` of shape ``(N,)`` in ``0 … num_classes - 1``. Checked at every load."""

    file: str  # path under the data root
    num_levels: int | None  # grey levels of discrete data; None for continuous data
    download: bool  # needs the internet (else built offline, deterministically)
    event_shape: tuple[int, ...]  # the shape of one example
    num_classes: int | None = None  # labelled data: y_<split> in 0 … num_classes − 1


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits.npz", 17, False, (1, 8, 8), num_classes=10),
    "mnist": DatasetInfo("mnist.npz", 256, True, (1, 28, 28), num_classes=10),
    "cifar10": DatasetInfo("cifar10.npz", 256, True, (3, 32, 32), num_classes=10),
    # 8×8 grey patches of scikit-learn's two sample photographs in the BSDS300 protocol of the
    # MAF papers (common.data.patches): not BSDS300
    "photo_patches": DatasetInfo("photo_patches.npz", None, False, (63,)),
    # The MAF tabular bundle (common.data.maf_tabular): the authors' preprocessing, float32
    "power": DatasetInfo("maf/power.npz", None, True, (6,)),
    "gas": DatasetInfo("maf/gas.npz", None, True, (8,)),
    "hepmass": DatasetInfo("maf/hepmass.npz", None, True, (21,)),
    "miniboone": DatasetInfo("maf/miniboone.npz", None, True, (43,)),
    "bsds300": DatasetInfo("maf/bsds300.npz", None, True, (63,)),
    **{name: DatasetInfo(f"toy/{name}.npz", None, False, (2,)) for name in TOY_NAMES},
}


def dataset_path(name: str, root: str | Path = "data") -> Path:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
    return Path(root) / DATASETS[name].file

"""Natural-image patches in the BSDS300 protocol of the MAF papers, built offline from the two
photographs scikit-learn bundles (``china.jpg`` and ``flower.jpg``, 427×640 colour).

The protocol (Uria et al. 2013, RNADE, Sec. 4.2, as used by MAF, Papamakarios et al. 2017,
Sec. 4.2 and Appendix D): monochrome 8×8 patches, uniformly dequantized and rescaled to [0, 1],
each patch's mean subtracted, the bottom-right pixel dropped (it is minus the sum of the
others), so 63 continuous dimensions. **These are not BSDS300**: two photographs instead of
300, so numbers on them are not comparable with the paper's BSDS300 column.

Splits without overlap: each photograph is cut into 32×32 blocks (13 × 20 of them; the bottom
11 rows of pixels are left out), and a seeded permutation per photograph assigns 80 % of its
blocks to training, 10 % to validation and 10 % to testing. Every patch lies inside one block,
so no pixel appears in two splits; the held-out blocks are spread over the whole photograph,
so each split sees every kind of content. Each block gives ``PATCHES_PER_BLOCK`` patches at
distinct positions (of the 25 × 25 a block has), drawn with a fixed seed.

The file is byte-identical on every build with the same JPEG decoder: scikit-learn decodes the
photographs with Pillow, and another libjpeg may round some pixels differently (then the file,
and the hash ``data.dvc`` records, change).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.npz import save_npz
from common.data_registry import dataset_path

__all__ = [
    "BLOCK",
    "PATCH",
    "PATCHES_PER_BLOCK",
    "build_photo_patches",
    "grey_levels",
    "patch_levels",
    "patches_from_photos",
]

PATCH, BLOCK, PATCHES_PER_BLOCK = 8, 32, 120
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train, validation, test: of each photograph's blocks


def grey_levels(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, L = (299 R + 587 G + 114 B) / 1000 rounded down, as 8-bit grey
    levels (what Pillow's ``convert("L")`` computes): ``(H, W, 3)`` uint8 → ``(H, W)`` uint8."""
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    return ((299 * r + 587 * g + 114 * b) // 1000).astype(np.uint8)


def patch_levels(photos: list[np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The grey levels ``(N, 64)`` uint8 of each split's patches, drawn from the blocks each
    split owns (module docstring)."""
    split_patches: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    positions = BLOCK - PATCH + 1
    for photo in photos:
        rows, cols = photo.shape[0] // BLOCK, photo.shape[1] // BLOCK
        blocks = rng.permutation(rows * cols)
        n_train = round(SPLIT_FRACTIONS[0] * len(blocks))
        n_val = round(SPLIT_FRACTIONS[1] * len(blocks))
        owned = {"train": blocks[:n_train], "val": blocks[n_train : n_train + n_val],
                 "test": blocks[n_train + n_val :]}  # fmt: skip
        for split, chosen in owned.items():
            for b in np.sort(chosen):
                top, left = (b // cols) * BLOCK, (b % cols) * BLOCK
                where = rng.choice(positions * positions, PATCHES_PER_BLOCK, replace=False)
                for i, j in zip(where // positions, where % positions, strict=True):
                    r, c = top + i, left + j
                    split_patches[split].append(photo[r : r + PATCH, c : c + PATCH].reshape(-1))
    return {split: np.stack(patches) for split, patches in split_patches.items()}


def patches_from_photos(photos: list[np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """``x_train``, ``x_val``, ``x_test`` (float32, ``(N, 63)``) from grey ``(H, W)`` uint8
    photographs, in the protocol of the module docstring."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, levels in patch_levels(photos, rng).items():
        x = (levels + rng.random(levels.shape)) / 256.0  # dequantize, rescale to [0, 1)
        x -= x.mean(axis=1, keepdims=True)  # subtract each patch's mean
        out[f"x_{split}"] = x[:, :-1].astype(np.float32)  # drop the bottom-right pixel
    return out


def build_photo_patches(root: str | Path) -> Path:
    """Build ``photo_patches.npz`` under ``root`` from scikit-learn's sample photographs."""
    from sklearn.datasets import load_sample_images

    photos = [grey_levels(image) for image in load_sample_images().images]
    return save_npz(dataset_path("photo_patches", root), **patches_from_photos(photos))

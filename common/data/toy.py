"""FFJORD's eight 2-D toy densities (Grathwohl et al. 2019, Sec. 5.1 and Fig. 2), regenerated
from their definitions with seeded NumPy generators so every split is reproducible.

Each generator returns ``(n, 2)`` float32 points. ``make_toy_splits`` draws train, validation
and test sets from independent, fixed seeds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["TOY_DATASETS", "make_toy_splits", "sample_toy"]

Generator = Callable[[np.random.Generator, int], np.ndarray]


def _sklearn():
    """scikit-learn's generators, imported on use: importing scikit-learn takes over a second,
    and every training job imports this module while only the data builder needs them."""
    from sklearn import datasets

    return datasets


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    x = _sklearn().make_swiss_roll(n, noise=1.0, random_state=_seed(rng))[0]
    return x[:, [0, 2]] / 5.0


def circles(rng: np.random.Generator, n: int) -> np.ndarray:
    return _sklearn().make_circles(n, factor=0.5, noise=0.08, random_state=_seed(rng))[0] * 3.0


def moons(rng: np.random.Generator, n: int) -> np.ndarray:
    x = _sklearn().make_moons(n, noise=0.1, random_state=_seed(rng))[0]
    return x * 2.0 + np.array([-1.0, -0.2])


def rings(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four concentric rings of radii 3, 2.25, 1.5, 0.75 with Gaussian noise (std 0.08)."""
    counts = [n // 4] * 3 + [n - 3 * (n // 4)]
    parts = []
    for radius, k in zip((3.0, 2.25, 1.5, 0.75), counts, strict=True):
        angle = np.linspace(0, 2 * np.pi, k, endpoint=False)
        parts.append(radius * np.stack([np.cos(angle), np.sin(angle)], 1))
    x = np.concatenate(parts)[rng.permutation(n)]
    return x + rng.normal(scale=0.08, size=x.shape)


def eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Eight isotropic Gaussians (std 0.5) on a circle of radius 4, scaled by 1/1.414."""
    s = 1.0 / np.sqrt(2.0)
    centers = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    x = centers[rng.integers(8, size=n)] + 0.5 * rng.normal(size=(n, 2))
    return x / 1.414


def pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    """Five arms: radial std 0.3, tangential std 0.1, twisted at rate 0.25."""
    num_classes, rate = 5, 0.25
    labels = rng.integers(num_classes, size=n)
    features = rng.normal(size=(n, 2)) * np.array([0.3, 0.1])
    features[:, 0] += 1.0
    angles = 2 * np.pi * labels / num_classes + rate * np.exp(features[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    rotations = np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)], 1)  # (n, 2, 2)
    return 2.0 * np.einsum("ti,tij->tj", features, rotations)


def two_spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    half = n // 2
    t = np.sqrt(rng.uniform(size=(half, 1))) * 540 * (2 * np.pi) / 360
    d1 = np.hstack([-np.cos(t) * t, np.sin(t) * t]) + rng.uniform(size=(half, 2)) * 0.5
    x = np.vstack([d1, -d1]) / 3.0
    if n % 2:
        x = np.vstack([x, x[:1]])
    return x + rng.normal(size=x.shape) * 0.1


def checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    x1 = rng.uniform(size=n) * 4 - 2
    x2 = rng.uniform(size=n) - rng.integers(0, 2, size=n) * 2
    x2 = x2 + np.floor(x1) % 2
    return np.stack([x1, x2], 1) * 2.0


TOY_DATASETS: dict[str, Generator] = {  # keys: common.data_registry.TOY_NAMES
    "swissroll": swissroll,
    "8gaussians": eight_gaussians,
    "pinwheel": pinwheel,
    "circles": circles,
    "moons": moons,
    "2spirals": two_spirals,
    "checkerboard": checkerboard,
    "rings": rings,
}


def sample_toy(name: str, n: int, seed: int) -> np.ndarray:
    """``n`` points of toy set ``name`` drawn with seed ``seed``: ``(n, 2)`` float32."""
    if name not in TOY_DATASETS:
        raise KeyError(f"unknown toy dataset {name!r}; available: {sorted(TOY_DATASETS)}")
    rng = np.random.default_rng(seed)
    return TOY_DATASETS[name](rng, n).astype(np.float32)


def make_toy_splits(
    name: str, n_train: int = 20_000, n_val: int = 5_000, n_test: int = 5_000
) -> dict[str, np.ndarray]:
    """Train/val/test splits from three fixed, distinct seeds (so they never overlap by seed)."""
    base = sorted(TOY_DATASETS).index(name) * 10
    return {
        "x_train": sample_toy(name, n_train, seed=base + 1),
        "x_val": sample_toy(name, n_val, seed=base + 2),
        "x_test": sample_toy(name, n_test, seed=base + 3),
    }

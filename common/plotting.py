"""Figures saved by every run: sample grids (images), densities (2-D data), training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["save_curves", "save_density_2d", "save_image_grid"]


def save_image_grid(images: torch.Tensor, num_levels: int, path: Path, title: str = "") -> Path:
    """Tile ``(N, C, H, W)`` images holding levels 0…n−1 into a square grid."""
    x = images.detach().float().cpu().numpy() / (num_levels - 1)
    n, c, h, w = x.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[
            i
        ].transpose(1, 2, 0)
    fig, ax = plt.subplots(figsize=(4, 4 * rows / cols))
    ax.imshow(grid.squeeze(-1) if c == 1 else grid, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def save_density_2d(model, data: torch.Tensor, path: Path, title: str = "", n: int = 5000) -> Path:
    """Three panels: data histogram, model density exp(log p) on a grid, model samples."""
    data = data[:n].cpu().numpy()
    lo, hi = np.percentile(data, 0.5, axis=0) - 0.5, np.percentile(data, 99.5, axis=0) + 0.5
    xs, ys = np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200)
    gx, gy = np.meshgrid(xs, ys)
    param = next(model.parameters())
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=param.dtype).to(param.device)
    density = model.log_prob(grid).exp().reshape(gx.shape).cpu().numpy()
    samples = model.sample(n).cpu().numpy()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    bins = [xs, ys]
    axes[0].hist2d(data[:, 0], data[:, 1], bins=bins, cmap="viridis")
    axes[0].set_title("data")
    axes[1].pcolormesh(gx, gy, density, cmap="viridis", shading="auto")
    axes[1].set_title("model density")
    axes[2].hist2d(samples[:, 0], samples[:, 1], bins=bins, cmap="viridis")
    axes[2].set_title("model samples")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def save_curves(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Train and validation NLL against steps from the trainer's history records."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, style in (("train/nll", "-"), ("val/nll", "o-")):
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            steps, values = zip(*pts, strict=True)
            ax.plot(steps, values, style, label=key, markersize=3, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (nats / example)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path

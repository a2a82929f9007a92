"""Figures saved by every run: sample grids (images), densities (2-D data, tori, spheres,
the plane), training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.files import replace_atomically, save_figure  # noqa: E402

__all__ = [
    "density_grid_2d",
    "save_curves",
    "save_density_2d",
    "save_density_comparison",
    "save_density_grid",
    "save_image_grid",
    "save_flat_density",
    "save_sphere_density",
]


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
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def density_grid_2d(model, data: torch.Tensor, n: int = 200) -> dict[str, np.ndarray]:
    """The model density exp(log p) on an ``n`` × ``n`` grid covering the data's 0.5–99.5 %
    range (+ 0.5), and the data's histogram on the same cells: ``x``, ``y`` (``(n,)``, cell
    centres), ``density`` and ``data`` (``(n, n)``, rows along y). Saved by every 2-D run, so
    that a report can set several models' densities side by side."""
    data = data.cpu().numpy()
    lo, hi = np.percentile(data, 0.5, axis=0) - 0.5, np.percentile(data, 99.5, axis=0) + 0.5
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    gx, gy = np.meshgrid(xs, ys)
    param = next(model.parameters())
    grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=param.dtype).to(param.device)
    density = model.log_prob(grid).detach().exp().reshape(gx.shape).cpu().numpy()
    edges = [np.linspace(a - (b - a) / (2 * (n - 1)), b + (b - a) / (2 * (n - 1)), n + 1)
             for a, b in ((lo[0], hi[0]), (lo[1], hi[1]))]  # fmt: skip
    hist = np.histogram2d(data[:, 1], data[:, 0], bins=[edges[1], edges[0]])[0]
    return {"x": xs, "y": ys, "density": density, "data": hist}


def save_density_grid(grid: dict[str, np.ndarray], path: Path) -> Path:
    """``grid`` (:func:`density_grid_2d`) as an ``.npz`` file, atomically."""
    return replace_atomically(path, lambda tmp: np.savez_compressed(tmp, **grid))


@torch.no_grad()
def save_density_2d(model, data: torch.Tensor, path: Path, title: str = "", n: int = 5000,
                    grid: dict[str, np.ndarray] | None = None) -> Path:  # fmt: skip
    """Three panels: data histogram, model density exp(log p) on a grid (``grid``, or
    :func:`density_grid_2d` of the model), model samples."""
    grid = grid if grid is not None else density_grid_2d(model, data)
    samples = model.sample(n).cpu().numpy()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    _grid_panel(axes[0], grid, grid["data"], "data")
    _grid_panel(axes[1], grid, grid["density"], "model density")
    bins = [_edges(grid["x"]), _edges(grid["y"])]
    axes[2].hist2d(samples[:, 0], samples[:, 1], bins=bins, cmap="viridis")
    axes[2].set_title("model samples")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _edges(centres: np.ndarray) -> np.ndarray:
    step = centres[1] - centres[0]
    return np.concatenate([centres - step / 2, centres[-1:] + step / 2])


def _grid_panel(ax, grid: dict[str, np.ndarray], values: np.ndarray, title: str) -> None:
    ax.pcolormesh(grid["x"], grid["y"], values, cmap="viridis", shading="auto")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def save_density_comparison(
    rows: list[tuple[str, dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]],
    columns: list[str],
    path: Path,
    title: str = "",
) -> Path:
    """Densities side by side, the layout of the i-ResNet and FFJORD toy figures: one row per
    dataset (its name, a grid holding its data histogram, and a grid per model label), the
    data first, then one column per label of ``columns`` (blank where a row lacks it)."""
    cols = 1 + len(columns)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.3 * len(rows)), squeeze=False)
    for r, (dataset, data_grid, models) in enumerate(rows):
        _grid_panel(axes[r, 0], data_grid, data_grid["data"], f"{dataset}: data")
        for c, label in enumerate(columns, 1):
            if label in models:
                _grid_panel(axes[r, c], models[label], models[label]["density"], label)
            else:
                axes[r, c].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def save_curves(
    history: list[dict[str, float]],
    path: Path,
    title: str = "",
    keys: tuple[str, str] = ("train/nll", "val/nll"),
    ylabel: str = "NLL (nats / example)",
) -> Path:
    """A training and a validation metric (default: NLL) against steps, from the trainer's
    history records."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, style in zip(keys, ("-", "o-"), strict=True):
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            steps, values = zip(*pts, strict=True)
            ax.plot(steps, values, style, label=key, markersize=3, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def save_flat_density(
    target_logp: torch.Tensor, model_logq: torch.Tensor, coords: dict, path: Path, title: str = ""
) -> Path:
    """Target and model densities on a flat 2-D domain (the torus [0, 2π)², a box, the plane
    within a box) as heat maps on one colour scale, first coordinate across, second up, and
    their marginals. Inputs: ``(n, n)`` log densities on the midpoint grid of
    :meth:`common.run.targets.Domain.grid` and its nodes per axis (two named axes)."""
    p, q = target_logp.double().exp().numpy(), model_logq.double().exp().numpy()
    (name1, nodes), name2 = next(iter(coords.items())), list(coords)[1]
    nodes = nodes.numpy()
    step = nodes[1] - nodes[0]
    extent = (nodes[0] - step / 2, nodes[-1] + step / 2) * 2
    labels = {"theta1": "θ₁", "theta2": "θ₂"}
    label1, label2 = labels.get(name1, name1), labels.get(name2, name2)
    vmax = max(p.max(), q.max())
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, values, name in ((axes[0], p, "target p"), (axes[1], q, "model q")):
        im = ax.imshow(values.T, origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(label1)
        ax.set_ylabel(label2)
    _colorbar(fig, im, axes[:2], "density (Lebesgue measure)")
    for axis, (style, label) in enumerate((("-", label1), ("--", label2))):
        axes[2].plot(nodes, p.sum(1 - axis) * step, style, color="k", label=f"target, {label}")
        axes[2].plot(nodes, q.sum(1 - axis) * step, style, color="C1", label=f"model, {label}")
    axes[2].set_title("marginal densities", fontsize=9)
    axes[2].set_xlabel("coordinate")
    axes[2].legend(fontsize=7)
    axes[2].grid(alpha=0.3)
    return _finish(fig, path, title)


def save_sphere_density(
    target_logp: torch.Tensor, model_logq: torch.Tensor, coords: dict, path: Path, title: str = ""
) -> Path:
    """Target and model densities on S² in the Mollweide projection (equal-area: the colour
    integrates to the probability of a region), longitude = azimuth φ of (x₁, x₂), latitude =
    arcsin x₃. Inputs: ``(n, n)`` log densities on :func:`common.flows.manifolds.sphere_grid`."""
    p, q = target_logp.double().exp().numpy(), model_logq.double().exp().numpy()
    phi, h = coords["phi"].numpy(), coords["h"].numpy()
    lon = np.where(phi > np.pi, phi - 2 * np.pi, phi)
    order = np.argsort(lon)
    lat = np.arcsin(h)
    vmax = max(p.max(), q.max())
    fig = plt.figure(figsize=(11, 3.4))
    for i, (values, name) in enumerate(((p, "target p"), (q, "model q"))):
        ax = fig.add_subplot(1, 2, i + 1, projection="mollweide")
        mesh = ax.pcolormesh(lon[order], lat, values[:, order], cmap="viridis", vmin=0,
                             vmax=vmax, shading="auto")  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    _colorbar(fig, mesh, fig.axes, "density (surface measure)")
    return _finish(fig, path, title)


def _colorbar(fig, mappable, axes, label: str) -> None:
    fig.colorbar(mappable, ax=axes, shrink=0.75, label=label)


def _finish(fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

"""Matplotlib helpers shared by the trainer's previews (learning) and the comparison figures
(application): Agg backend, atomic PNG writes, scatter limits, image grids."""
from __future__ import annotations

import math

import torch


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path):
    from scoresde._io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    pyplot().close(fig)


def host(x: torch.Tensor) -> torch.Tensor:
    """float32 on the CPU, where matplotlib and numpy can read it (from any device or dtype)."""
    return x.detach().to(device="cpu", dtype=torch.float32)


def limit(x) -> float:
    """Half-width of a square scatter that shows 99.5 % of the first two coordinates."""
    return float(x[:, :2].abs().quantile(0.995)) * 1.2 + 1e-6


def scatter(ax, x, lim, fontsize=6):
    """The first two coordinates on a square [-lim, lim]² with its axis scale (small tick labels)."""
    ax.scatter(x[:, 0], x[:, 1] if x.shape[1] > 1 else torch.zeros_like(x[:, 0]), s=1, alpha=0.4)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.tick_params(labelsize=fontsize, length=2, pad=1)
    ax.set_aspect("equal")


def image_grid(x: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """(B, C, H, W) in [−1, 1] -> one (H', W', C) array in [0, 1] tiled row-major."""
    x = (host(x).clamp(-1, 1) + 1) / 2
    B, C, H, W = x.shape
    nrow = nrow or math.ceil(math.sqrt(B))
    ncol = math.ceil(B / nrow)
    out = torch.ones(C, ncol * (H + 1) + 1, nrow * (W + 1) + 1)
    for i in range(B):
        r, c = divmod(i, nrow)
        out[:, 1 + r * (H + 1): 1 + r * (H + 1) + H, 1 + c * (W + 1): 1 + c * (W + 1) + W] = x[i]
    return out.permute(1, 2, 0).squeeze(-1)


def save_samples_png(x: torch.Tensor, path: str, title: str = "") -> None:
    """A single scatter (2-D) or image grid of samples."""
    plt = pyplot()
    x = host(x)
    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    if x.ndim == 2:  # vectors: the first two coordinates
        scatter(ax, x[:5000], limit(x), fontsize=8)
    elif x.ndim == 4:
        ax.imshow(image_grid(x[:64]), cmap="gray")
        ax.axis("off")
    else:
        ax.hist(x.flatten().numpy(), bins=100)
    ax.set_title(title)
    save(fig, path)

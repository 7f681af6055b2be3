"""Figures for `scoresde compare` and `sample` (matplotlib, Agg backend, written atomically)."""
from __future__ import annotations

import torch

from ._figures import host, image_grid, save_samples_png
from ._figures import limit as _limit, pyplot as _plt, save as _save, scatter as _scatter

__all__ = ["quality_vs_nfe", "samples_panel", "save_samples_png", "image_grid"]


def quality_vs_nfe(rows: list[dict], path: str, title: str = "") -> None:
    """One line per solver: sliced W2 (and per-mode std ratio when known) against nfe."""
    plt = _plt()
    keys = [k for k in ("sw2", "std_ratio") if any(k in r for r in rows)]
    if not keys:
        keys = ["wall_s"]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name in dict.fromkeys(r["solver"] for r in rows):
            pts = sorted((r["nfe"], r[key]) for r in rows if r["solver"] == name and key in r)
            ax.plot(*zip(*pts), marker="o", label=name)
        if key == "sw2" and "sw2_floor" in rows[0]:
            ax.axhline(rows[0]["sw2_floor"], color="k", ls="--", lw=1, label="floor (data vs data)")
        if key == "std_ratio":
            ax.axhline(1.0, color="k", ls="--", lw=1)
        ax.set_xscale("log")
        if key == "sw2":
            ax.set_yscale("log")
        ax.set_xlabel("score evaluations (nfe)")
        ax.set_ylabel({"sw2": "sliced W2 to data", "std_ratio": "per-mode std / true std"}.get(key, key))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def samples_panel(samples: dict, path: str, reference: torch.Tensor | None = None, max_points: int = 2000) -> None:
    """Scatter panels (2-D data) or image grids, one per (solver, steps), rows = solvers."""
    plt = _plt()
    solvers = list(dict.fromkeys(k[0] for k in samples))
    steps = list(dict.fromkeys(k[1] for k in samples))
    ncol = len(steps) + (reference is not None)
    fig, axes = plt.subplots(len(solvers), ncol, figsize=(2.2 * ncol, 2.2 * len(solvers)), squeeze=False)
    samples = {k: host(v) for k, v in samples.items()}
    reference = host(reference) if reference is not None else None
    first = next(iter(samples.values()))
    is_2d = first.ndim == 2  # vectors: scatter the first two coordinates
    lim = _limit(first) if is_2d else None

    def show(ax, x):
        if is_2d:
            _scatter(ax, x[:max_points], lim)
        else:
            x = x[:16].reshape(min(16, x.shape[0]), -1, *x.shape[-2:]) if x.ndim >= 3 else x[:16]
            if x.ndim == 4:
                ax.imshow(image_grid(x), cmap="gray")
            ax.axis("off")

    for i, s in enumerate(solvers):
        for j, k in enumerate(steps):
            ax = axes[i][j]
            if (s, k) in samples:
                show(ax, samples[(s, k)])
                ax.set_title(f"{s} {k if k is not None else 'adaptive'}", fontsize=8)
            else:
                ax.axis("off")
        if reference is not None:
            show(axes[i][-1], reference)
            axes[i][-1].set_title("data", fontsize=8)
    fig.tight_layout()
    _save(fig, path)

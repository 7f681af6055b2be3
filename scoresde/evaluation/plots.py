"""Figures for `scoresde compare` and `sample` (matplotlib, Agg backend, written atomically)."""
from __future__ import annotations

import torch

from scoresde.training.figures import host, image_grid, save_samples_png
from scoresde.training.figures import limit as _limit, pyplot as _plt, save as _save, scatter as _scatter

__all__ = ["guidance_sweep", "quality_vs_nfe", "samples_panel", "save_samples_png", "image_grid", "sde_label", "run_title"]


def sde_label(cfg: dict) -> str:
    """'VP SDE (linear β 0.1→20)' from an SDE's config() dict, for titles and headers."""
    name = cfg.get("name", "?")
    if name == "ve":
        return f"VE SDE (σ {cfg['sigma_min']:g}→{cfg['sigma_max']:g})"
    if name == "vpdiscrete":
        table = cfg.get("beta_schedule", "trained")
        return f"VP SDE ({table} β table, N = {cfg['N']})"
    label = {"vp": "VP", "subvp": "sub-VP"}.get(name, name)
    if cfg.get("schedule") == "cosine":
        return f"{label} SDE (cosine schedule)"
    return f"{label} SDE (β {cfg['beta_min']:g}→{cfg['beta_max']:g})"


def run_title(model: str, sde_cfg: dict, n: int, seed: int, step: int | None = None) -> str:
    """One readable line naming what a figure shows: model (and training step), SDE, n, seed."""
    trained = f", step {step}" if step is not None else ""
    return f"{model}{trained} · {sde_label(sde_cfg)} · n = {n} · seed {seed}"


METRIC_AXES = {"mode_w2": "within-mode W2 (mode stds; ranks solvers)",
               "sw2": "sliced W2 to data (data units)",
               "off_mode": "off every mode (% of samples)"}


# matplotlib's tab10 without its grey (index 7), which is the exact-sample band's colour
SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                 "#000000")
ROUND_NFE = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def tick_labels(ticks, gap: float = 1.3) -> set:
    """The ticks to label on a log axis: the round step counts first, then the rest, each kept
    only if it is at least `gap`× away from every label already kept (so 50 is not lost to 39)."""
    kept: list = []
    for t in sorted(ticks, key=lambda t: (t not in ROUND_NFE, t)):
        if all(max(t, k) >= gap * min(t, k) for k in kept):
            kept.append(t)
    return set(kept)


def quality_vs_nfe(rows: list[dict], path: str, title: str = "", band: dict | None = None) -> None:
    """One line per solver against nfe: the ranking metric (mode_w2 when an oracle is known,
    else sliced W2 to data) and, with an oracle, the off-mode percentage.

    band (see compare.perfect_sampler_band): the range the ranking metric of exact samples of
    the same size falls in, drawn as a shaded strip; a perfect sampler's points scatter inside
    it, so a point at or just below it is sampling noise, not a sampler beating the data."""
    plt = _plt()
    keys = [k for k in ("mode_w2", "off_mode") if any(k in r for r in rows)] or \
           [k for k in ("sw2",) if any(k in r for r in rows)] or ["wall_s"]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.4), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], keys):
        scale = 100.0 if key == "off_mode" else 1.0
        for i, name in enumerate(dict.fromkeys(r["solver"] for r in rows)):
            pts = sorted((r["nfe"], scale * r[key]) for r in rows if r["solver"] == name and key in r)
            if pts:
                color, style = SERIES_COLORS[i % len(SERIES_COLORS)], ("-", "--", ":")[i // len(SERIES_COLORS) % 3]
                ax.plot(*zip(*pts), marker="o", ms=4, label=name, color=color, ls=style)
                if len(pts) == 1:  # a lone point (an adaptive run) has no line to follow to the legend
                    ax.annotate(name, pts[0], xytext=(4, 4), textcoords="offset points", fontsize=7, color=color)
        if band is not None and band["metric"] == key:
            ax.axhspan(band["lo"], band["hi"], color="0.6", alpha=0.35, lw=0,
                       label=f"exact samples of this size\n(range of {band['draws']} draws)")
        ax.set_xscale("log")
        ticks = sorted({r["nfe"] for r in rows})
        if len(ticks) <= 12:  # label the nfe actually used, as plain numbers, no two crowding each other
            shown = tick_labels(ticks)
            ax.set_xticks(ticks, [str(t) if t in shown else "" for t in ticks])
            ax.xaxis.set_minor_locator(plt.NullLocator())
        if key == "off_mode":
            ax.set_yscale("symlog", linthresh=0.1, linscale=0.5)  # linear below 0.1 %, where 0 must show
            top = max([100 * r["off_mode"] for r in rows if "off_mode" in r], default=1)
            ax.set_ylim(0, min(100, max(1, 3 * top)))
        elif key != "wall_s":
            ax.set_yscale("log")
        ax.set_xlabel("score evaluations (nfe)")
        ax.set_ylabel(METRIC_AXES.get(key, key))
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def guidance_sweep(rows: list[dict], path: str, title: str = "") -> None:
    """Class accuracy, within-mode W2 and diversity against the guidance weight w, one line per
    (solver, steps): rows are compare records with a 'w' column (those without a metric skipped)."""
    plt = _plt()
    keys = [k for k in ("class_acc", "mode_w2", "diversity") if any(k in r for r in rows)] or ["wall_s"]
    labels = {"class_acc": "class accuracy", "mode_w2": "within-mode W2 (mode stds)",
              "diversity": "diversity (modes used / modes of the class)"}
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False, layout="constrained")
    runs = list(dict.fromkeys((r["solver"], r["steps"]) for r in rows))
    for ax, key in zip(axes[0], keys):
        for i, (solver, steps) in enumerate(runs):
            pts = sorted((r["w"], r[key]) for r in rows if (r["solver"], r["steps"]) == (solver, steps) and key in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=4, color=SERIES_COLORS[i % len(SERIES_COLORS)],
                        label=f"{solver} {steps or 'adaptive'}")
        ax.set_xlabel("guidance w  ((1 + w)·s(x, c) − w·s(x, ∅))")
        ax.set_ylabel(labels.get(key, key))
        if key in ("class_acc", "diversity"):  # shares: on their whole range, so 0.997 does not look like a fall
            ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def samples_panel(samples: dict, path: str, reference: torch.Tensor | None = None, max_points: int = 2000,
                  nfe: dict | None = None, title: str = "") -> None:
    """Scatter panels (2-D data, shared axis scale) or image grids: one row per solver, its runs
    left to right, then the data; each panel names its steps and, given nfe = {(solver, steps):
    nfe}, its score evaluations."""
    plt = _plt()
    rows = {}
    for key in samples:
        rows.setdefault(key[0], []).append(key)
    ncol = max(map(len, rows.values())) + (reference is not None)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.3 * ncol, 2.3 * len(rows) + 0.3), squeeze=False,
                             layout="constrained")
    samples = {k: host(v) for k, v in samples.items()}
    reference = host(reference) if reference is not None else None
    first = next(iter(samples.values()))
    is_2d = first.ndim == 2  # vectors: scatter the first two coordinates
    lim = _limit(reference if reference is not None and is_2d else first) if is_2d else None

    def show(ax, x):
        if is_2d:
            _scatter(ax, x[:max_points], lim)
        else:
            x = x[:16].reshape(min(16, x.shape[0]), -1, *x.shape[-2:]) if x.ndim >= 3 else x[:16]
            if x.ndim == 4:
                ax.imshow(image_grid(x), cmap="gray")
            ax.axis("off")

    for i, keys in enumerate(rows.values()):
        for j in range(ncol - (reference is not None)):
            ax = axes[i][j]
            if j >= len(keys):
                ax.axis("off")
                continue
            s, k = keys[j]
            show(ax, samples[keys[j]])
            label = f"{s}, {k} steps" if k is not None else f"{s}, adaptive"
            if nfe and keys[j] in nfe:
                label += f", {nfe[keys[j]]} nfe"
            ax.set_title(label, fontsize=7)
        if reference is not None:
            show(axes[i][-1], reference)
            axes[i][-1].set_title("data", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)

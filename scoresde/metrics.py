"""Sample-quality metrics against a known Gaussian mixture, and sliced Wasserstein-2."""
from __future__ import annotations

import math

import torch
from scipy.stats import chi2

from .oracle import GaussianMixture

_CHUNK = 32  # projections sorted at a time: a million samples cost 256 MB, not 2 GB per 256


def _whitened(x: torch.Tensor, data: GaussianMixture):
    """Whitened residuals to every mode: r_k = Λ_k^{-1/2} U_kᵀ (x − μ_k), shape (B, K, D)."""
    mu, lam, U, _ = data._params(x)
    y = x[:, None, :] - mu[None]
    if not data.diagonal:
        y = torch.einsum("bkd,kde->bke", y, U)
    return y / lam.sqrt()[None]


def _normal_quantiles(n: int, device=None) -> torch.Tensor:
    p = (torch.arange(n, dtype=torch.float64, device=device) + 0.5) / n
    return torch.special.ndtri(p)


def _directions(D: int, n_proj: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """n_proj unit vectors θ (D, n_proj), float64, drawn on the CPU (the same on every device)."""
    theta = torch.randn(D, n_proj, generator=generator, dtype=torch.float64)
    return (theta / theta.norm(dim=0, keepdim=True)).to(device)


def _sorted_projections(x: torch.Tensor, theta: torch.Tensor, chunk: int):
    """Each column block of sort(x @ θ, along samples): memory n·chunk, not n·n_proj."""
    for j in range(0, theta.shape[1], chunk):
        yield torch.sort(x @ theta[:, j:j + chunk], 0)[0]


def mode_metrics(x: torch.Tensor, data: GaussianMixture, radius: float = 5.0, n_proj: int = 64) -> dict:
    """Per-mode quality of samples x (n, D) from a mixture with well-separated modes.

    Each sample goes to the mode with the smallest Mahalanobis distance d; it is off every mode
    when d² exceeds the χ²_D quantile with the tail probability that `radius` stds have in 2-D,
    P(χ²_D > r²) = e^(−radius²/2): exactly d > radius in 2-D, and the same rarity for exact
    samples in any D (in 64-D an exact sample sits about √64 = 8 stds from its mode).
      std_ratio: √(mean squared whitened residual / D) over on-mode samples (ideal 1)
      off_mode:  fraction of samples off every mode (ideal ≈ 0)
      mode_tv:   ½ Σ_k |ŵ_k − w_k| with ŵ the on-mode share of mode k (ideal ≈ 0)
      mode_w2:   sliced W2 between the on-mode whitened residuals and N(0, I), each projection
                 compared with the exact normal quantiles Φ⁻¹((i − ½)/n); sees spread and shape
                 errors inside the modes, in units of the mode's std (ideal ≈ 0, floor ~ n^−½)
    """
    x = data._flat(x).to(torch.float64)  # on x's device; the scalars come back as floats
    r = _whitened(x, data)
    r2 = r.pow(2).sum(-1)
    d2, k = r2.min(1)
    on = d2 <= float(chi2.isf(math.exp(-radius ** 2 / 2), data.D))
    n_on = int(on.sum())
    std_ratio = float((d2[on].sum() / (n_on * data.D)).sqrt()) if n_on else float("nan")
    counts = torch.bincount(k[on], minlength=data.K).to(torch.float64)
    w_hat = counts / max(n_on, 1)
    mode_w2 = float("nan")
    if n_on:
        res = torch.gather(r, 1, k[:, None, None].expand(-1, 1, data.D))[:, 0][on]  # residual to own mode
        theta = _directions(data.D, n_proj, torch.Generator().manual_seed(0), x.device)
        q = _normal_quantiles(n_on, x.device)[:, None]
        sq = sum(float((p - q).pow(2).sum()) for p in _sorted_projections(res, theta, _CHUNK))
        mode_w2 = math.sqrt(sq / (n_on * n_proj))
    return {"std_ratio": std_ratio, "off_mode": 1 - n_on / x.shape[0],
            "mode_tv": float(0.5 * (w_hat - data.weights.to(w_hat.device)).abs().sum()), "mode_w2": mode_w2}


def sliced_w2(x: torch.Tensor, y: torch.Tensor, n_proj: int = 256,
              generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-2: √(E_θ W2²(θᵀx, θᵀy)) over random unit directions θ (drawn on the
    CPU from `generator`); the 1-D W2 is the mean squared difference of sorted projections
    (equal sample sizes).  Computed on x's device (y is moved there), projections in blocks."""
    x = x.flatten(1).to(torch.float64)
    y = y.flatten(1).to(dtype=torch.float64, device=x.device)
    if x.shape != y.shape:
        raise ValueError(f"sliced_w2 needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    theta = _directions(x.shape[1], n_proj, generator, x.device)
    sq = sum(float((px - py).pow(2).sum())
             for px, py in zip(_sorted_projections(x, theta, _CHUNK), _sorted_projections(y, theta, _CHUNK)))
    return math.sqrt(sq / (x.shape[0] * n_proj))


def quality(x: torch.Tensor, data: GaussianMixture, seed: int = 0) -> dict:
    """mode_metrics plus sliced W2 against a fresh exact sample of the same size, and the
    floor: the sliced W2 between two fresh exact samples (what a perfect sampler scores)."""
    g = torch.Generator().manual_seed(seed)
    ref = data.sample(x.shape[0], generator=g, dtype=torch.float64)
    ref2 = data.sample(x.shape[0], generator=g, dtype=torch.float64)
    return dict(mode_metrics(x, data), **sw2_with_floor(x, ref, ref2, seed))


def sw2_with_floor(x: torch.Tensor, ref: torch.Tensor, ref2: torch.Tensor, seed: int = 0) -> dict:
    """Sliced W2 of x to `ref`, and the floor: the same projections between two independent
    reference samples `ref2` and `ref` (what a perfect sampler would score)."""
    return {"sw2": sliced_w2(x, ref, generator=torch.Generator().manual_seed(seed + 1)),
            "sw2_floor": sliced_w2(ref2, ref, generator=torch.Generator().manual_seed(seed + 1))}

"""Sample-quality metrics against a known Gaussian mixture, sliced Wasserstein-2, and image metrics
that need no downloaded weights: k-NN precision/recall and a Fréchet distance in a user's feature space."""
from __future__ import annotations

import math
import os

import torch
from scipy.stats import chi2

from scoresde.oracle import GaussianMixture

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


def class_metrics(x: torch.Tensor, data: GaussianMixture, label: int, radius: float = 5.0) -> dict:
    """Quality of samples x (n, D) meant to come from class `label` of a labelled mixture:

      class_acc:   fraction of samples whose nearest mode (Mahalanobis) is one of the class's own
                   (ideal 1)
      mode_w2, std_ratio, off_mode, mode_tv: mode_metrics against p_0(x | c), the class's own
                   sub-mixture, so mode_tv compares the per-mode weights within the class
      diversity:   exp(H(ŵ))/exp(H(w)), the effective number of the class's modes the on-mode
                   samples use over the number the data use (ideal 1; 1/K_c when all sit on one)
    """
    sub = data.conditional(label)
    xf = data._flat(x).to(torch.float64)
    nearest = _whitened(xf, data).pow(2).sum(-1).argmin(1)
    acc = float((data.classes.to(nearest.device)[nearest] == label).to(torch.float64).mean())
    out = {"class_acc": acc, **mode_metrics(xf, sub, radius)}
    r2 = _whitened(xf, sub).pow(2).sum(-1)
    d2, k = r2.min(1)
    on = d2 <= float(chi2.isf(math.exp(-radius ** 2 / 2), data.D))
    w_hat = torch.bincount(k[on], minlength=sub.K).to(torch.float64) / max(int(on.sum()), 1)

    def perplexity(w):
        w = w[w > 0]
        return float(torch.exp(-(w * w.log()).sum()))
    out["diversity"] = perplexity(w_hat) / perplexity(sub.weights.to(w_hat.device)) if int(on.sum()) else float("nan")
    return out


def path_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """The pathwise error of samples x against ref, the same draws solved another way (e.g. the
    converged probability-flow ODE from the same x_T): ( (1/n) Σ_i ‖x_i − ref_i‖² / D )^½, in
    float64, D the size of one sample."""
    d = (x - ref).flatten(1).double()
    return float((d.pow(2).sum(1) / d.shape[1]).mean().sqrt())


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
    return {"sw2": sliced_w2(x, ref, generator=torch.Generator().manual_seed((seed + 1) % 2 ** 64)),
            "sw2_floor": sliced_w2(ref2, ref, generator=torch.Generator().manual_seed((seed + 1) % 2 ** 64))}


# -- image metrics: no downloaded weights -----------------------------------------------------------
def _pairwise_dist(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) in float64 on a's device, a chunk of rows at a time."""
    a = a.flatten(1).to(torch.float64)
    b = b.flatten(1).to(dtype=torch.float64, device=a.device)
    return torch.cat([torch.cdist(a[i:i + chunk], b) for i in range(0, a.shape[0], chunk)])


def knn_radii(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must lie in 1 … {x.shape[0] - 1} for {x.shape[0]} points, got {k}")
    d = _pairwise_dist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the (k+1)-th smallest: the 0 to itself comes first


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019) from k-NN manifold estimates.

    The real manifold is the union of balls B(φ_r, r_k(φ_r)), r_k the distance to φ_r's k-th
    nearest real neighbour; likewise for the fake one.
      precision = (1/|F|) Σ_f 1[∃ r: ‖φ_f − φ_r‖ ≤ r_k(φ_r)]   (samples that look like data)
      recall    = (1/|R|) Σ_r 1[∃ f: ‖φ_r − φ_f‖ ≤ r_k(φ_f)]   (data the samples cover)
    Rows are flattened: pixels, or features of any network.  Computed on real's device."""
    fake = fake.to(real.device)
    d_rf = _pairwise_dist(real, fake)
    precision = (d_rf <= knn_radii(real, k)[:, None]).any(0).double().mean()
    recall = (d_rf <= knn_radii(fake, k)[None, :]).any(1).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def _sqrt_psd(a):
    import numpy as np

    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (W2²) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂):
    ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½.
    The trace term comes from the eigenvalues of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (the same
    as tr √(Σ₁Σ₂), whose eigenvalues it shares), so no complex matrix square root is needed."""
    import numpy as np

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance needs means (F,) and covariances (F, F) of one F, got "
                         f"{mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}")
    s1 = _sqrt_psd(cov1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(s1 @ cov2 @ s1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def gaussian_stats(feats: torch.Tensor):
    """Mean and unbiased covariance (float64 numpy) of rows (n, F)."""
    f = feats.flatten(1).to(torch.float64).cpu().numpy()
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows for a covariance, got {f.shape[0]}")
    return f.mean(0), (f - f.mean(0)).T @ (f - f.mean(0)) / (f.shape[0] - 1)


def load_feature_net(path: str) -> torch.jit.ScriptModule:
    """A user's TorchScript module mapping images (B, C, H, W) on [−1, 1] to features (B, F)."""
    if not os.path.isfile(path):
        raise ValueError(f"--features {path!r}: no such file (give a TorchScript module saved with torch.jit.save)")
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except Exception as e:  # TorchScript reports a bad archive as RuntimeError, ValueError, or zip errors
        raise ValueError(f"--features {path!r} is not a TorchScript module ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:120]})") from None


@torch.no_grad()
def features(net, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """net(x) batch by batch (on the net's device), flattened to (n, F) float64 on the CPU; the
    shape is checked."""
    out, where = [], next((p.device for p in net.parameters()), x.device)
    for i in range(0, x.shape[0], batch_size):
        try:
            f = net(x[i:i + batch_size].to(device=where, dtype=torch.float32))
        except Exception as e:  # whatever the user's module raises on these inputs
            raise ValueError(f"the feature network failed on images of shape {tuple(x.shape[1:])}: "
                             f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}") from None
        if not torch.is_tensor(f) or f.ndim < 1 or f.shape[0] != min(batch_size, x.shape[0] - i):
            raise ValueError(f"the feature network must return a tensor (B, F) for B images, got "
                             f"{tuple(f.shape) if torch.is_tensor(f) else type(f).__name__}")
        out.append(f.detach().flatten(1).to(torch.float64).cpu())
    return torch.cat(out)


class ImageReference:
    """Sample quality of images against real data, computed with the data's share done once:
    two disjoint reference samples ref and ref2 (same size as the samples to score).

    score(x) → sw2 (sliced W2 in pixel space on [−1, 1]), precision/recall (k-NN in pixel space),
    and fd (Fréchet distance of the feature network's outputs) when a network is given; each with
    its floor: the same metric between ref2 and ref, what a perfect sampler would score at this
    sample size.  Samples are clamped to [−1, 1], the range images are saved in."""

    def __init__(self, ref: torch.Tensor, ref2: torch.Tensor, feature_net=None, k: int = 3, seed: int = 0):
        self.ref, self.ref2, self.net, self.k, self.seed = ref.float().cpu(), ref2.float().cpu(), feature_net, k, seed
        self.floor = self._metrics(self.ref2, suffix="_floor")

    def _metrics(self, x: torch.Tensor, suffix: str = "") -> dict:
        out = {"sw2": sliced_w2(x, self.ref, generator=torch.Generator().manual_seed((self.seed + 1) % 2 ** 64))}
        out.update(precision_recall(self.ref, x, self.k))
        if self.net is not None:
            if not hasattr(self, "_ref_stats"):
                self._ref_stats = gaussian_stats(features(self.net, self.ref))
            out["fd"] = frechet_distance(*gaussian_stats(features(self.net, x)), *self._ref_stats)
        return {k + suffix: v for k, v in out.items()}

    def score(self, x: torch.Tensor) -> dict:
        x = x.float().cpu().clamp(-1, 1)
        if x.shape != self.ref.shape:
            raise ValueError(f"samples have shape {tuple(x.shape)}, the reference {tuple(self.ref.shape)}")
        return dict(self._metrics(x), **self.floor)


# A run whose spread is off by this factor either way is broken for the data, not just inaccurate:
# converged solvers on the oracles score 0.97-1.03, and the few-step and extreme-eps runs that
# land 10x off have no other symptom (their samples are finite).
SPREAD_OFF = 2.0


def spread_ratio(x: torch.Tensor, data: GaussianMixture, sde, t: float) -> float:
    """The samples' RMS distance from their mean over the exact one of p_t (the oracle's marginal
    at the solve's end time t: covariance m(t)²·Cov_0 + σ(t)²·I); 1 for a correct sampler up to
    sampling noise, nan for non-finite samples."""
    m, s = sde.marginal(torch.tensor([float(t)], dtype=torch.float64))
    exact = float(m[0] ** 2 * torch.trace(data.covariance()) + s[0] ** 2 * data.D)
    xf = x.detach().double().cpu().flatten(1)
    return math.sqrt(float((xf - xf.mean(0)).pow(2).sum(1).mean()) / exact)


def spread_warning(x: torch.Tensor, data: GaussianMixture, sde, t: float, label: str) -> str | None:
    """One line when the spread of x is SPREAD_OFF or more times off the exact one at t (see
    spread_ratio), naming `label` (solver and steps) and the ratio; else None."""
    r = spread_ratio(x, data, sde, t)
    if not math.isfinite(r) or 1 / SPREAD_OFF < r < SPREAD_OFF:
        return None
    return (f"{label}: the samples' spread is {r:.3g} x the exact spread at t = {t:.3g} (the oracle's); "
            f"too few steps or too extreme an eps for this solver (see 'Steps and eps' in docs/solvers.md)")

"""The KL upper bound of a time grid (KLUB; Sabour, Fidler & Kreis 2024, "Align Your Steps", §3.2–3.3).

In x̃ = x/m and σ̃ = σ/m every SDE here (VP, sub-VP, VE) is one SDE: under the forward process
x̃ is x_0 plus a Brownian motion run for time σ̃² (dx̃ = (g/m) dW and g²/m² = dσ̃²/dt), and with
the score s = (m·D − x)/σ² (D = x̂_0 = E[x_0 | x̃], Tweedie) the reverse SDE reads

    dx̃ = −2·(D(x̃, σ̃) − x̃)/σ̃ dσ̃ + √(2σ̃) dW̄        (σ̃ decreasing).

A first-order stochastic sampler on the grid σ̃_0 > … > σ̃_K holds the denoiser at its value at
the start of each step, D(x̃, σ̃) ≈ D_i = D(x̃_{σ̃_i}, σ̃_i) on [σ̃_{i+1}, σ̃_i]; that linear SDE is
solved exactly by DDPM's ancestral step with β̃ (= DDIM η = 1 = SDE-DPM-Solver-1):

    x̃_{i+1} = D_i + (σ̃²_{i+1}/σ̃²_i)·(x̃_i − D_i) + σ̃_{i+1}·√(1 − σ̃²_{i+1}/σ̃²_i)·z.

Both SDEs have the diffusion √(2σ̃), so Girsanov's theorem bounds the KL divergence between
their outputs (started from the same p_T) by ½·E∫‖Δdrift‖²/g² dσ̃ = ½·E∫(4/σ̃²)‖ΔD‖²/(2σ̃) dσ̃:

    KL(p_exact ‖ p_grid) ≤ KLUB = Σ_i ∫_{σ̃_{i+1}}^{σ̃_i} E‖D(x̃_σ̃, σ̃) − D(x̃_{σ̃_i}, σ̃_i)‖² / σ̃³ dσ̃,

the expectation over paths of the exact reverse process, which are the forward process's
(exact score assumed; with a learned one this is the discretization part of the bound, the
paper's App. A.4): x_0 ~ data, x̃_σ̃ = x_0 + σ̃·z₁ and, a forward transition later,
x̃_{σ̃_i} = x̃_σ̃ + √(σ̃_i² − σ̃²)·z₂ (the paper's eq. 9; not the same noise z₁ — with it the
Gaussian check below would fail).  The bound depends on the grid alone, not on the solver.

Estimate (the paper's §3.3): per step, importance sampling of σ̃ from

    π_i(σ̃) ∝ σ̃⁻³·(1/(σ̃² + c²) − 1/(σ̃_i² + c²)),

the integrand for N(μ, c²I) data, where E‖ΔD‖² = c⁴·d·(1/(σ̃²+c²) − 1/(σ̃_i²+c²)) (Lemma 3.3);
c is the data's per-coordinate RMS spread, and σ̃ is drawn by inverting π_i's closed-form CDF.
The draws (x_0, z₁, z₂, u) are made once per estimator, n per step: every grid is scored on
the same numbers (common random numbers), so the estimate is a smooth function of the grid.

A grid that ends at σ = 0 (ddpm, ddim) has an infinite bound on its last step, which lands on
the data; there the integral stops at σ̃_min = σ̃(t_min) (default t_min = sde.default_eps).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from scoresde import _rng
from scoresde.convert import x0_from_score

from ._common import SolverError


def sigma_tilde(sde, ts: torch.Tensor) -> torch.Tensor:
    """σ̃(t) = σ/m = exp(−λ(t)), 0 where σ = 0 (float64)."""
    return torch.exp(-sde.log_snr(ts.to(torch.float64)))


def denoiser(score_fn: Callable, sde, x_tilde: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """D(x̃, σ̃(t)) = x̂_0 = (x + σ²·s(x, t))/m at x = m·x̃, for a batch of times t (B,)."""
    t = t.to(torch.float64)
    m, s = torch.exp(sde.log_mean_coef(t)), sde.std(t)
    shape = (-1,) + (1,) * (x_tilde.ndim - 1)
    x = m.to(x_tilde).reshape(shape) * x_tilde
    return x0_from_score(x, score_fn(x, t.to(device=x.device, dtype=x.dtype)), m.to(x), s.to(x))


def _antiderivative(s: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """A(s) = ∫ s⁻³(1/(s² + c²) − 1/(b² + c²)) ds = k/(2s²) + (log(1 + y) − y)/(2c⁴), k = 1/(b²+c²),
    y = c²/s² (partial fractions); log(1+y) − y by its series where it would cancel."""
    y = (c / s) ** 2
    series = y * y * (-1 / 2 + y * (1 / 3 + y * (-1 / 4 + y / 5)))
    l1 = torch.where(y < 1e-3, series, torch.log1p(y) - y)
    return 1 / (b * b + c * c) / (2 * s * s) + l1 / (2 * c ** 4)


def _inverse_cdf(u: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: float, iters: int = 30):
    """σ̃ ∈ [a, b] with A(σ̃) = A(a) + u·(A(b) − A(a)): bisection in log σ̃ (A increases on [a, b]),
    then Newton steps with A' = σ̃⁻³(1/(σ̃²+c²) − 1/(b²+c²)), so the root is smooth in (a, b, u)."""
    a, b = a[:, None], b[:, None]
    A_a = _antiderivative(a, b, c)
    target = A_a + u * (_antiderivative(b, b, c) - A_a)
    lo, hi = a.log().expand_as(u), b.log().expand_as(u)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = _antiderivative(mid.exp(), b, c) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    s = (0.5 * (lo + hi)).exp()
    for _ in range(2):
        slope = (1 / (s * s + c * c) - 1 / (b * b + c * c)) / s ** 3
        step = (_antiderivative(s, b, c) - target) / slope
        s = torch.where(slope > 0, s - step, s).clamp(lo.exp(), hi.exp())
    return s


def t_of_sigma_tilde(sde, st: torch.Tensor) -> torch.Tensor:
    """t with σ̃(t) = st: bisection on λ(t) = −log st, then Newton steps with dλ/dt = −g²/(2σ²)."""
    lam = -st.log()
    t = sde.t_from_log_snr(lam, iters=30)
    for _ in range(2):
        t = (t + (sde.log_snr(t) - lam) * 2 * sde.std(t) ** 2 / sde.g2(t)).clamp(0, sde.T)
    return t


class KLUB:
    """KLUB(grid) for grids of K steps, from fixed draws (see the module doc).

    x0: (K, n, ...) data samples, one batch of n per step; generator: for z₁, z₂ and u;
    c: the importance-sampling scale (default: the data's RMS spread per coordinate);
    t_min: where the integral stops for a grid ending at σ = 0 (default sde.default_eps);
    batch: score evaluations per call.  `estimator(ts)` returns the KLUB of the grid ts
    (K+1 decreasing times), `estimator.terms(ts)` its K per-step parts.
    """

    def __init__(self, score_fn: Callable, sde, x0: torch.Tensor, generator: torch.Generator | None = None,
                 c: float | None = None, t_min: float | None = None, batch: int = 16384):
        self.score_fn, self.sde, self.x0, self.batch = score_fn, sde, x0, batch
        self.K, self.n = x0.shape[:2]
        self.z1 = _rng.randn(x0.shape, generator, x0.dtype, x0.device)
        self.z2 = _rng.randn(x0.shape, generator, x0.dtype, x0.device)
        self.u = _rng.rand((self.K, self.n), generator, torch.float64).cpu()
        flat = x0.reshape(self.K * self.n, -1).to(torch.float64)
        self.c = float(c) if c is not None else float(flat.var(0).mean().sqrt())
        if not self.c > 0:
            raise SolverError(f"the data's spread c must be > 0, got {self.c!r}")
        t_min = sde.default_eps if t_min is None else t_min
        self.st_min = float(sigma_tilde(sde, torch.tensor([t_min], dtype=torch.float64, device="cpu")))

    def _D(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1)
        return torch.cat([denoiser(self.score_fn, self.sde, xt[i:i + self.batch], t[i:i + self.batch])
                          for i in range(0, xt.shape[0], self.batch)])

    def terms(self, ts: torch.Tensor) -> torch.Tensor:
        """The K per-step parts of the KLUB of the grid ts (float64, 0 for a step below σ̃_min)."""
        ts = ts.to(torch.float64).cpu()
        if ts.numel() != self.K + 1:
            raise SolverError(f"this estimator scores grids of {self.K} steps, got {ts.numel() - 1}")
        st = sigma_tilde(self.sde, ts)
        lo = float(st[-1]) if st[-1] > 0 else self.st_min
        b_all, a_all = st[:-1], st[1:].clamp_min(lo)
        live = (b_all > lo).nonzero().flatten()
        out = torch.zeros(self.K, dtype=torch.float64, device="cpu")  # grid math is host-side float64
        if live.numel() == 0:
            return out
        a, b, c = a_all[live], b_all[live], self.c
        s = _inverse_cdf(self.u[live], a, b, c)  # (L, n)
        G = _antiderivative(b, b, c) - _antiderivative(a, b, c)  # ∫ π_i unnormalized
        t_s = t_of_sigma_tilde(self.sde, s)
        t_b = ts[live][:, None].expand_as(s)
        shape = (-1, self.n) + (1,) * (self.x0.ndim - 2)
        dev, dt = self.x0.device, self.x0.dtype
        s_x, b_x = s.to(dev, dt).reshape(shape), b.to(dev, dt).reshape(-1, 1, *shape[2:])
        x_s = self.x0[live] + s_x * self.z1[live]
        x_b = x_s + (b_x ** 2 - s_x ** 2).clamp_min(0).sqrt() * self.z2[live]
        flat = lambda v: v.reshape(-1, *v.shape[2:])  # noqa: E731
        D = self._D(torch.cat([flat(x_s), flat(x_b)]), torch.cat([t_s.reshape(-1), t_b.reshape(-1)]).to(dev))
        L = live.numel() * self.n
        sq = (D[:L] - D[L:]).reshape(live.numel(), self.n, -1).to(torch.float64).pow(2).sum(-1).cpu()
        den = 1 / (s * s + c * c) - 1 / (b[:, None] ** 2 + c * c)
        ratio = torch.where(den > 0, sq / den.clamp_min(1e-300), torch.zeros_like(sq))
        out[live] = G * ratio.mean(1)
        return out

    def __call__(self, ts: torch.Tensor) -> float:
        return float(self.terms(ts).sum())

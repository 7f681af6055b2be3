"""Variational bounds on the log-likelihood, beside the probability-flow ODE's value.

Three numbers describe how well a score model fits data x (all in nats per sample, or bits/dim):

- ode:  log p_eps(x) of the probability-flow ODE model (scoresde.likelihood): an estimate of an
        exact density (solver tolerance; Hutchinson is unbiased).
- elbo: a lower bound on log p_eps(x) of the reverse-SDE model (Song, Durkan, Murray & Ermon
        2021, "Maximum likelihood training of score-based diffusion models", Thm. 2), any SDE.
- vlb:  a lower bound on log p(x) of the N-step DDPM chain (Ho et al. 2020, eq. 5), VP only.

With the exact score the SDE and ODE models have the same marginals and the same mean
log-likelihood over p_eps, E log p_eps − KL(p_T ‖ prior) (see continuous_elbo); the DDPM chain
is a different model whose Gaussian reverse steps and decoder cost a gap that closes as N grows.
Every random draw comes from the `generator` passed in.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from scoresde import _rng
from scoresde._checks import check_int
from scoresde.convert import score_to_eps
from scoresde.likelihood import (LogpSummary, bits_per_dim, bits_per_dim_estimate, dequantize, resolve_levels,
                                 standard_error)

ESTIMATES = ("ode", "elbo", "vlb")
T_SAMPLING = ("logsnr", "uniform")


@dataclass
class Estimate(LogpSummary):
    """One likelihood number for n data points.

    name: 'ode', 'elbo' or 'vlb'; bpd: mean bits/dim; stderr: its standard error over the data
    points (nan for n = 1); logp: (n,) nats per sample on the density scale of [−1, 1]^D (the
    ODE's log p, or the bound's value; for discrete data the VLB's log-probability plus
    D·log(L/2), the log-volume of a dequantization cell, so all three share one scale);
    nfe: score-function calls (each over a batch of rows); evals: score evaluations of single
    points (rows); seconds: wall time; what: what the number bounds or estimates; details: the
    terms and settings it was made with."""

    name: str
    bpd: float
    stderr: float
    logp: torch.Tensor
    nfe: int
    evals: int
    seconds: float
    n: int
    D: int
    levels: int | None
    what: str
    details: dict = field(default_factory=dict)



def _check_x(x) -> None:
    if not torch.is_tensor(x) or x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a tensor of shape (B, ...), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")


def _score_rows(score_fn, x: torch.Tensor, t: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """score_fn over the rows of x in slices of batch_size rows; returns (scores, calls)."""
    out, calls = [], 0
    with torch.no_grad():
        for a in range(0, x.shape[0], batch_size):
            s = score_fn(x[a:a + batch_size], t[a:a + batch_size])
            if s.shape != x[a:a + batch_size].shape:
                raise ValueError(f"score_fn returned shape {tuple(s.shape)}, expected {tuple(x[a:a + batch_size].shape)}")
            out.append(s.to(x.dtype))
            calls += 1
    return torch.cat(out), calls


def _sq(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).pow(2).sum(1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


# ----------------------------------------------------------------------------------------------
# The continuous-time ELBO
# ----------------------------------------------------------------------------------------------

def sample_times(sde, n: int, samples: int, eps: float, t_sampling: str = "logsnr",
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, w) of shape (n, samples), float64: stratified draws in [eps, T] and their importance
    weights w = 1/p(t), so that mean_k w·h(t_k) is unbiased for ∫_eps^T h(t) dt.

    u_k = (k + U_k)/samples, U_k ~ U[0, 1) (one draw per stratum, each point its own).
    'uniform': t = eps + u(T − eps), w = T − eps.
    'logsnr': uniform in λ = log(m/σ) between λ(T) and λ(eps), t = λ⁻¹; since
    dλ/dt = −g²/(2σ²) for every SDE here, p(t) = g²/(2σ²·Δλ) and w = 2σ²Δλ/g².  This is the
    likelihood-weighting density (t ∝ g²/σ²): it spends the draws where the noise level changes
    fastest, near eps, where a sharp (e.g. dequantized) data density makes the integrand large."""
    if t_sampling not in T_SAMPLING:
        raise ValueError(f"t_sampling must be one of {', '.join(map(repr, T_SAMPLING))}, got {t_sampling!r}")
    # host-side float64 tables (drawn where the generator lives, then on the CPU); moved to x's device by the caller
    u = (torch.arange(samples, dtype=torch.float64, device="cpu")
         + _rng.rand((n, samples), generator, torch.float64, "cpu")) / samples
    T = sde.T
    if t_sampling == "uniform":
        return eps + u * (T - eps), torch.full_like(u, T - eps)
    lam_hi, lam_lo = sde.log_snr(eps).double(), sde.log_snr(T).double()
    t = sde.t_from_log_snr(lam_hi - u * (lam_hi - lam_lo)).clamp(eps, T)
    w = 2 * sde.std(t) ** 2 * (lam_hi - lam_lo) / sde.g2(t)
    return t, w


def elbo_terms(score_fn: Callable, sde, x: torch.Tensor, *, eps: float | None = None, samples: int = 16,
               t_sampling: str = "logsnr", antithetic: bool = True, control: bool = True,
               generator: torch.Generator | None = None, batch_size: int = 4096) -> dict:
    """Per-sample terms of the continuous-time ELBO on log p_eps(x), in nats, shape (B,).

    The data point is the state at t = eps (the probability-flow ODE's convention), and the
    forward process runs from it: x_t = m_c·x + σ_c·ε with m_c = m(t)/m(eps),
    σ_c² = σ(t)² − m_c²σ(eps)².  For the reverse-SDE model with score s_θ and prior π
    (Song et al. 2021, Thm. 2, denoising form, started at eps; ∇·f = D·f(t) for a linear drift):

        log p_eps(x) ≥ E log π(x_T) + D·log(m(T)/m(eps))
                       − ∫_eps^T ½g(t)²·E_ε[‖s_θ(x_t, t)‖² + 2 s_θ(x_t, t)·ε/σ_c] dt.

    (This is −‖s_θ − ∇log q(x_t|x)‖² + ‖∇log q(x_t|x)‖², ∇log q = −ε/σ_c, written out.)
    'prior': E log π(x_T) in closed form, x_T ~ N(m_c(T)·x, σ_c(T)² I):
        −(D/2)·log(2πs²) − (m_c²‖x‖² + Dσ_c²)/(2s²), s the prior std.
    'drift': D·log(m(T)/m(eps)) (= ∫ ∇·f dt, exact).
    'diffusion': the integral, by Monte Carlo: `samples` stratified times per point with weights
    from sample_times, and per time one ε, used twice (ε and −ε) when `antithetic`:
    ½g²·[½(‖s₊‖² + ‖s₋‖²) + (s₊ − s₋)·ε/σ_c], s± = s_θ(m_c x ± σ_c ε).  The term ε/σ_c has
    variance ∝ 1/σ_c² as t → eps; the antithetic pair cancels it to first order (it becomes
    ≈ 2εᵀ(∂s/∂x)ε), so the estimate keeps a finite variance there.  With `control`, the zero-mean
    term c(t)·(‖ε‖² − D)/σ_c² is added, c = r(2 − r), r = σ_c²/(m_c²·var(x) + σ_c²): it cancels the
    chi-square noise that a Gaussian of x's scale would leave in the bracket (see the code).
    'elbo' = prior + drift − diffusion; 'nfe' and 'evals': calls and rows of score_fn.
    """
    _check_x(x)
    eps = sde.likelihood_eps if eps is None else float(eps)
    if not (math.isfinite(eps) and 0 < eps < sde.T):
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}")
    samples = check_int("samples", samples)
    batch_size = check_int("batch_size", batch_size)
    # points in chunks of about 4·batch_size rows, so memory stays bounded for any n; the control
    # variate's data scale comes from all of x
    chunk = max(1, (4 * batch_size) // (samples * (2 if antithetic else 1)))
    var_x = x.double().flatten(1).var(0).mean().item() if x.shape[0] > 1 else 1.0
    parts = [_elbo_chunk(score_fn, sde, x[a:a + chunk], eps, samples, t_sampling, antithetic, control, var_x,
                         generator, batch_size) for a in range(0, x.shape[0], chunk)]
    return {k: torch.cat([q[k] for q in parts]) if torch.is_tensor(parts[0][k]) else sum(q[k] for q in parts)
            for k in parts[0]}


def _elbo_chunk(score_fn, sde, x, eps, samples, t_sampling, antithetic, control, var_x, generator, batch_size):
    n, D, dt = x.shape[0], x[0].numel(), x.dtype
    t, w = sample_times(sde, n, samples, eps, t_sampling, generator)
    lm_eps, s_eps = sde.log_mean_coef(eps).double(), sde.std(eps).double()
    mc = torch.exp(sde.log_mean_coef(t) - lm_eps)
    # σ_c² is a difference of two positive numbers that cancel as t → eps; float64 keeps it accurate
    # down to t − eps ~ 1e-12, and the clamp guards the rounding below that
    sc = (sde.std(t) ** 2 - mc ** 2 * s_eps ** 2).clamp_min(1e-300).sqrt()
    g2 = sde.g2(t)
    z = _rng.randn((n, samples, *x.shape[1:]), generator, dt, x.device)
    shape = (n * samples, *x.shape[1:])
    xr = x[:, None].expand(n, samples, *x.shape[1:]).reshape(shape)
    zf = z.reshape(shape)
    mcf, scf = (c.reshape(-1).to(dt).to(x.device) for c in (mc, sc))
    view = (-1,) + (1,) * (x.ndim - 1)
    xp = mcf.view(view) * xr + scf.view(view) * zf
    tf = t.reshape(-1).to(dt).to(x.device)
    if antithetic:
        xm = mcf.view(view) * xr - scf.view(view) * zf
        s, calls = _score_rows(score_fn, torch.cat([xp, xm]), torch.cat([tf, tf]), batch_size)
        sp, sm = s[:n * samples], s[n * samples:]
        inner = 0.5 * (_sq(sp) + _sq(sm)) + _dot(sp - sm, zf) / scf
    else:
        sp, calls = _score_rows(score_fn, xp, tf, batch_size)
        inner = _sq(sp) + 2 * _dot(sp, zf) / scf
    if control:
        # c·(‖ε‖² − D)/σ_c² has mean zero for every x and t, so any c keeps the estimate unbiased.
        # For a Gaussian of variance v along a direction the ε² part of `inner` is
        # ε²(σ_c²/v² − 2/v); c = r(2 − r), r = σ_c²/v, removes it.  v is taken as
        # m_c²·var(x) + σ_c², var(x) the data's mean variance per coordinate: at high noise this
        # removes the chi-square noise of ‖ε‖²/σ_c² (the DSM form's), at low noise that of εᵀ(∂s/∂x)ε.
        # The coefficient r(2 − r)/σ_c² → 2/v as t → eps is formed in float64 (tiny over tiny).
        r = sc ** 2 / (mc ** 2 * var_x + sc ** 2)
        cv = (r * (2 - r) / sc ** 2).reshape(-1).to(dt).to(x.device)
        inner = inner + cv * (_sq(zf) - D)
    h = (0.5 * g2.reshape(-1).to(dt).to(x.device) * inner).reshape(n, samples)
    diffusion = (w.to(dt).to(x.device) * h).mean(1)
    s2 = sde.prior_std ** 2
    mT = float(torch.exp(sde.log_mean_coef(sde.T) - lm_eps))
    scT2 = float(sde.std(sde.T) ** 2 - mT ** 2 * s_eps ** 2)
    prior = -0.5 * D * math.log(2 * math.pi * s2) - (mT ** 2 * _sq(x) + D * scT2) / (2 * s2)
    drift = torch.full_like(prior, D * float(sde.log_mean_coef(sde.T) - lm_eps))
    return dict(elbo=prior + drift - diffusion, prior=prior, drift=drift, diffusion=diffusion, nfe=calls,
                evals=xp.shape[0] * (2 if antithetic else 1))


def continuous_elbo(score_fn: Callable, sde, x: torch.Tensor, *, bits: float | None = None,
                    levels: int | None = None, repeats: int = 1, eps: float | None = None, samples: int = 16,
                    t_sampling: str = "logsnr", antithetic: bool = True, generator: torch.Generator | None = None,
                    batch_size: int = 4096) -> Estimate:
    """The continuous-time ELBO of the reverse-SDE model (any SDE) as an Estimate.

    For each of `repeats` draws the data are dequantized exactly as on the ODE route
    (likelihood.dequantize: x̃ = 2(k + u)/L − 1) and the per-sample bound of elbo_terms is
    taken at x̃; the repeats are averaged per sample, ELBO_i = (1/R) Σ_r ELBO(x̃_i,r), and

        bpd_i = −ELBO_i/(D ln 2) + (log₂L − 1)   (likelihood.bits_per_dim),

    an upper bound on the model's bits/dim of the discrete data, since
    E_u log p(x̃) ≤ log P(k) (Jensen) and ELBO ≤ log p.  bits=None (and no levels): continuous
    data, no dequantization, bpd = −ELBO/(D ln 2).  stderr: over the n data points (it includes
    the Monte Carlo noise in t and ε, each point's draws being independent).  With the exact
    score of p_t, ELBO(x) = log p_eps(x) − E[log(p_T/π)(x_T) | x_eps = x] for every x: the
    reverse SDE is then the exact time reversal and only the prior differs; averaged over
    x ~ p_eps this is E log p_eps − KL(p_T ‖ π)."""
    _check_x(x)
    L = resolve_levels(bits, levels)
    repeats = check_int("repeats", repeats)
    if L is None and repeats > 1:
        raise ValueError(f"repeats={repeats} averages over dequantization draws; continuous data has none, "
                         f"so use repeats=1")
    t0 = time.perf_counter()
    D = x[0].numel()
    vals, parts, nfe, evals = [], [], 0, 0
    for _ in range(repeats):
        xin = dequantize(x, levels=L, generator=generator) if L else x
        out = elbo_terms(score_fn, sde, xin, eps=eps, samples=samples, t_sampling=t_sampling,
                         antithetic=antithetic, generator=generator, batch_size=batch_size)
        vals.append(out["elbo"].double().cpu())
        parts.append({k: out[k].double().mean().item() for k in ("prior", "drift", "diffusion")})
        nfe, evals = nfe + out["nfe"], evals + out["evals"]
    logp = torch.stack(vals).mean(0)
    bpd = bits_per_dim(logp, D, levels=L) if L else -logp / (D * math.log(2))
    details = {k: sum(p[k] for p in parts) / repeats for k in parts[0]}
    details.update(eps=sde.likelihood_eps if eps is None else float(eps), samples=samples, t_sampling=t_sampling,
                   antithetic=antithetic, repeats=repeats)
    return Estimate("elbo", bpd.mean().item(), standard_error(bpd), logp, nfe, evals, time.perf_counter() - t0, len(logp),
                    D, L, "lower bound on log p_eps of the reverse-SDE model (upper bound on its bits/dim); "
                    f"Monte Carlo over t ({t_sampling}, {samples} per point) and ε", details)


# ----------------------------------------------------------------------------------------------
# The DDPM variational bound
# ----------------------------------------------------------------------------------------------

VARIANCES = ("beta_tilde", "beta")


def discrete_schedule(sde) -> tuple[torch.Tensor, torch.Tensor]:
    """(β, ᾱ) of a variance-preserving SDE's discrete chain, float64, index i−1 holding β_i, ᾱ_i
    at t_i = i/N; a one-line ValueError naming the SDE otherwise (sub-VP has the tables but is
    not variance preserving, so its marginals are not the chain's)."""
    betas, abar = getattr(sde, "discrete_betas", None), getattr(sde, "alphas_cumprod", None)
    half = torch.tensor(0.5 * sde.T, dtype=torch.float64, device="cpu")
    vp = betas is not None and abar is not None and abs(
        float(torch.exp(2 * sde.log_mean_coef(half)) + sde.std(half) ** 2) - 1) < 1e-6
    if not vp:
        raise ValueError(f"the DDPM bound needs a variance-preserving SDE with a discrete β table "
                         f"(discrete_betas, alphas_cumprod), got {sde!r}; use the continuous ELBO instead")
    # float64 tables on the CPU: the bound reads them per step and moves what it needs
    betas = torch.as_tensor(betas, dtype=torch.float64, device="cpu")
    abar = torch.as_tensor(abar, dtype=torch.float64, device="cpu")
    if sde.T < 1 - 1e-9:  # the chain's last step is at t_N = N/N = 1
        raise ValueError(f"the DDPM chain's times i/N reach t = 1, past T = {sde.T} of {sde!r}")
    return betas, abar


def _tables(sde):
    betas, abar = discrete_schedule(sde)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64, device="cpu"), abar[:-1]])
    return betas, abar, abar_prev


def ddpm_posterior(sde, i: int, x0: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(μ̃, β̃) of q(x_{i−1} | x_i, x_0) (Ho et al. 2020, eqs. 6–7), 1 ≤ i ≤ N:
    μ̃ = √ᾱ_{i−1}β_i/(1−ᾱ_i)·x_0 + √α_i(1−ᾱ_{i−1})/(1−ᾱ_i)·x_i,  β̃ = (1−ᾱ_{i−1})/(1−ᾱ_i)·β_i."""
    betas, abar, abar_prev = _tables(sde)
    b, a, ap = float(betas[i - 1]), float(abar[i - 1]), float(abar_prev[i - 1])
    return (math.sqrt(ap) * b / (1 - a)) * x0 + (math.sqrt(1 - b) * (1 - ap) / (1 - a)) * xt, (1 - ap) / (1 - a) * b


def reverse_variance(sde, i: int, variance: str = "beta_tilde") -> float:
    """σ_i² of p_θ(x_{i−1} | x_i): β̃_i or β_i (the ddpm solver's `variance`).  For i = 1 (the
    decoder) β̃_1 = 0, so 'beta_tilde' takes β̃_2, as DDPM's clipped posterior log-variance does;
    'beta' takes β_1."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(map(repr, VARIANCES))}, got {variance!r}")
    betas, abar, abar_prev = _tables(sde)
    if variance == "beta":
        return float(betas[i - 1])
    j = max(i, 2) if len(betas) > 1 else i
    return float((1 - abar_prev[j - 1]) / (1 - abar[j - 1]) * betas[j - 1])


def ddpm_reverse_mean(sde, i: int, xt: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
    """μ_θ(x_i, i) = (x_i − β_i/√(1−ᾱ_i)·ε̂)/√α_i (Ho et al. 2020, eq. 11); for i = 1 it is x̂_0."""
    betas, abar, _ = _tables(sde)
    b, a = float(betas[i - 1]), float(abar[i - 1])
    return (xt - b / math.sqrt(1 - a) * eps_hat) / math.sqrt(1 - b)


def _log_normal_interval(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) − Φ(a)) for a < b (±inf allowed), accurate in both tails: an interval right of 0
    is mirrored to the left, where log Φ is accurate, and log(1 − e^d) is taken stably."""
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = torch.special.log_ndtr(lo), torch.special.log_ndtr(hi)
    d = la - lb  # ≤ 0
    return lb + torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def decoder_nll(x0: torch.Tensor, mean: torch.Tensor, var: float, levels: int | None = None) -> torch.Tensor:
    """L_0 = −log p_θ(x_0 | x_1) in nats per sample, p_θ = N(mean, var·I) per coordinate.

    levels L (data x = 2k/(L−1) − 1 on [−1, 1]): DDPM's discretized Gaussian (eq. 13), the mass
    of the bin [x − δ, x + δ], δ = 1/(L−1), with the outer bins open to ±∞:
        −Σ_d log(Φ((x+δ−μ)/σ) − Φ((x−δ−μ)/σ)),
    with the exact normal CDF (improved-diffusion uses a tanh approximation of Φ).
    levels None: the continuous Gaussian density, ½Σ_d[(x−μ)²/σ² + log(2πσ²)]."""
    sd = math.sqrt(var)
    if levels is None:
        return 0.5 * (((x0 - mean) / sd).pow(2) + math.log(2 * math.pi * var)).flatten(1).sum(1)
    delta = 1.0 / (levels - 1)
    inf = torch.full_like(x0, math.inf)
    hi = torch.where(x0 > 1 - delta / 2, inf, (x0 + delta - mean) / sd)
    lo = torch.where(x0 < -1 + delta / 2, -inf, (x0 - delta - mean) / sd)
    return -_log_normal_interval(lo, hi).flatten(1).sum(1)


def gaussian_kl(m1: torch.Tensor, v1: float, m2: torch.Tensor, v2: float) -> torch.Tensor:
    """KL(N(m1, v1·I) ‖ N(m2, v2·I)) per sample, nats: ½Σ_d[log(v2/v1) + v1/v2 − 1 + (m1−m2)²/v2]."""
    D = m1[0].numel()
    return 0.5 * (D * (math.log(v2 / v1) + v1 / v2 - 1) + _sq(m1 - m2) / v2)


def vlb_prior(sde, x0: torch.Tensor) -> torch.Tensor:
    """L_N = KL(q(x_N | x_0) ‖ N(0, s²I)) per sample, q = N(√ᾱ_N·x_0, (1−ᾱ_N)I), s the prior std:
    ½Σ_d[log(s²/(1−ᾱ_N)) + ((1−ᾱ_N) + ᾱ_N x_d²)/s² − 1]."""
    _, abar, _ = _tables(sde)
    a, s2, D = float(abar[-1]), sde.prior_std ** 2, x0[0].numel()
    return 0.5 * (D * (math.log(s2 / (1 - a)) + (1 - a) / s2 - 1) + a * _sq(x0) / s2)


def vlb_term(score_fn: Callable, sde, x0: torch.Tensor, i: int, noise: torch.Tensor, variance: str = "beta_tilde",
             levels: int | None = None) -> torch.Tensor:
    """One term of the DDPM bound at step i (1 ≤ i ≤ N) for x_i = √ᾱ_i·x_0 + √(1−ᾱ_i)·noise, per
    sample in nats: L_{i−1} = KL(q(x_{i−1}|x_i, x_0) ‖ N(μ_θ, σ_i²)) for i ≥ 2, the decoder
    L_0 = −log p_θ(x_0 | x_1) for i = 1 (see decoder_nll).  ε̂ = −σ(t_i)·s_θ(x_i, t_i), t_i = i/N,
    σ the SDE's std (convert.score_to_eps; it returns a network's own ε output exactly)."""
    betas, abar, _ = _tables(sde)
    N = len(betas)
    if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= N:
        raise ValueError(f"i must be an integer step in [1, N] = [1, {N}], got {i!r}")
    a = float(abar[i - 1])
    xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
    t = torch.full((x0.shape[0],), i / N, dtype=x0.dtype, device=x0.device)
    s, _ = _score_rows(score_fn, xt, t, x0.shape[0])
    eps_hat = score_to_eps(s, sde.std(t))
    var = reverse_variance(sde, i, variance)
    if i == 1:
        return decoder_nll(x0, ddpm_reverse_mean(sde, 1, xt, eps_hat), var, levels)
    mu_q, var_q = ddpm_posterior(sde, i, x0, xt)
    return gaussian_kl(mu_q, var_q, ddpm_reverse_mean(sde, i, xt, eps_hat), var)


def term_probabilities(sde, t_sampling: str = "uniform") -> torch.Tensor:
    """p(i) for i = 2 … N (length N − 1, float64) for the sampled bound: uniform, or 'logsnr'
    ∝ log SNR_{i−1} − log SNR_i (SNR_i = ᾱ_i/(1−ᾱ_i)), the discrete form of t ∝ g²/σ²."""
    if t_sampling not in T_SAMPLING:
        raise ValueError(f"t_sampling must be one of {', '.join(map(repr, T_SAMPLING))}, got {t_sampling!r}")
    _, abar, _ = _tables(sde)
    if t_sampling == "uniform":
        return torch.full((len(abar) - 1,), 1.0 / (len(abar) - 1), dtype=torch.float64, device="cpu")
    logsnr = torch.log(abar) - torch.log1p(-abar)
    d = logsnr[:-1] - logsnr[1:]
    return d / d.sum()


def vlb_terms(score_fn: Callable, sde, x0: torch.Tensor, *, variance: str = "beta_tilde", levels: int | None = None,
              terms: int | None = None, t_sampling: str = "uniform", generator: torch.Generator | None = None,
              batch_size: int = 4096) -> dict:
    """Per-sample DDPM bound −log p_θ(x_0) ≤ L_N + Σ_{i=2}^N L_{i−1} + L_0, nats, shape (B,).

    terms None: the full sum, one fresh noise per (point, step): N − 1 KL terms and the decoder,
    N score evaluations per point.  terms K: the prior and decoder exactly, and the N − 1 KL
    terms by K independent draws i_k ~ p (term_probabilities) per point, weighted 1/(K·p(i_k)):
    unbiased, K + 1 evaluations per point.  For i ≥ 2, with x_i = √ᾱ_i x_0 + √(1−ᾱ_i)ε,
    μ̃ − μ_θ = β_i/(√α_i √(1−ᾱ_i))·(ε̂ − ε), so

        L_{i−1} = ½Σ_d[log(σ_i²/β̃_i) + β̃_i/σ_i² − 1] + β_i²/(2σ_i² α_i (1−ᾱ_i))·‖ε − ε̂‖²,

    which is how it is computed (no cancellation between the two means); vlb_term computes the
    same from the two means.  Returns nll (the bound on −log p_θ), prior, kl (the weighted KL sum),
    decoder, nfe, evals."""
    _check_x(x0)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(map(repr, VARIANCES))}, got {variance!r}")
    batch_size = check_int("batch_size", batch_size)
    betas, abar, abar_prev = _tables(sde)
    N, n, D, dt, dev = len(betas), x0.shape[0], x0[0].numel(), x0.dtype, x0.device
    if levels is not None:
        k = torch.round((x0 + 1) / 2 * (levels - 1))
        off = (x0 - (2 * k / (levels - 1) - 1)).abs().max().item()
        if off > 1e-4:
            raise ValueError(f"the discretized decoder needs data on the {levels}-level grid 2k/{levels - 1} − 1; "
                             f"x is off it by up to {off:.3g} (dequantized data?)")
    # the (point, step, weight) rows and the per-point sums are host-side bookkeeping on the CPU
    cpu = dict(device="cpu")
    if terms is None:
        idx = torch.arange(1, N + 1, **cpu).repeat(n)
        pts = torch.arange(n, **cpu).repeat_interleave(N)
        wts = torch.ones(n * N, dtype=torch.float64, **cpu)
    else:
        terms = check_int("terms", terms)
        if N < 2:
            raise ValueError("a sampled bound needs N >= 2 steps")
        p = term_probabilities(sde, t_sampling)
        draw = torch.multinomial(p.to(generator.device if generator is not None else "cpu"), n * terms,
                                 replacement=True, generator=generator).cpu()
        idx = torch.cat([torch.ones(n, dtype=torch.long, **cpu), draw + 2])
        pts = torch.cat([torch.arange(n, **cpu), torch.arange(n, **cpu).repeat_interleave(terms)])
        wts = torch.cat([torch.ones(n, dtype=torch.float64, **cpu), 1.0 / (terms * p[draw])])
    # per-step coefficients (float64 tables, then the data dtype)
    if variance == "beta_tilde" and N < 2:
        raise ValueError("variance='beta_tilde' needs N >= 2 steps (β̃_1 = 0 leaves the decoder no variance); "
                         "use variance='beta'")
    var_post = (1 - abar_prev) / (1 - abar) * betas
    # reverse_variance for every step at once: β_i, or β̃_i with β̃_2 in place of β̃_1 = 0
    var_model = betas.clone() if variance == "beta" else var_post.clone()
    if variance == "beta_tilde" and N > 1:
        var_model[0] = var_post[1]
    const = torch.zeros(N, dtype=torch.float64, **cpu)
    const[1:] = 0.5 * D * (torch.log(var_model[1:] / var_post[1:]) + var_post[1:] / var_model[1:] - 1)
    coef = betas ** 2 / (2 * var_model * (1 - betas) * (1 - abar))
    kl = torch.zeros(n, dtype=torch.float64, **cpu)
    dec = torch.zeros(n, dtype=torch.float64, **cpu)
    calls = 0
    view = (-1,) + (1,) * (x0.ndim - 1)
    for a in range(0, len(idx), batch_size):
        i, pt, wt = idx[a:a + batch_size], pts[a:a + batch_size], wts[a:a + batch_size]
        xb = x0[pt.to(dev)]
        z = _rng.randn(xb.shape, generator, dt, dev)
        ab = abar[i - 1].to(dt).to(dev)
        xt = ab.sqrt().view(view) * xb + (1 - ab).sqrt().view(view) * z
        t = (i.to(torch.float64) / N).to(dt).to(dev)
        s, c = _score_rows(score_fn, xt, t, batch_size)
        calls += c
        eps_hat = score_to_eps(s, sde.std(t))
        term = (const[i - 1] + coef[i - 1] * _sq(z - eps_hat).double().cpu())
        first = i == 1
        if first.any():
            f = first.to(dev)
            mean = ddpm_reverse_mean(sde, 1, xt[f], eps_hat[f])
            term[first] = decoder_nll(xb[f], mean, float(var_model[0]), levels).double().cpu()
            dec.index_add_(0, pt[first], term[first])
        kl.index_add_(0, pt[~first], (wt * term)[~first])
    prior = vlb_prior(sde, x0).double().cpu()
    return dict(nll=prior + kl + dec, prior=prior, kl=kl, decoder=dec, nfe=calls, evals=len(idx))


DECODERS = ("discretized", "dequantized")


def ddpm_vlb(score_fn: Callable, sde, x: torch.Tensor, *, bits: float | None = None, levels: int | None = None,
             variance: str = "beta_tilde", terms: int | None = None, t_sampling: str = "uniform",
             decoder: str = "discretized", repeats: int = 1, generator: torch.Generator | None = None,
             batch_size: int = 4096) -> Estimate:
    """The DDPM variational bound of a VP model on its discrete schedule (the SDE's discrete_betas
    and alphas_cumprod, N steps, model times t_i = i/N) as an Estimate (see vlb_terms).

    Discrete data (bits or levels L, values 2k/(L−1) − 1):
    - decoder 'discretized' (DDPM's): the data are scored as they are, the discretized decoder bounds
      the probability of the integers, bpd = nll/(D ln 2), an upper bound on −log₂P(k)/D.  This is
      the bound of a model trained on the integer data (DDPM's own, a diffusers checkpoint);
    - decoder 'dequantized': as on the ODE route, `repeats` draws x̃ = 2(k + u)/L − 1, the Gaussian
      decoder density at x̃, averaged per point, bpd = nll/(D ln 2) + (log₂L − 1) (bits_per_dim): the
      bound of a model trained on dequantized data (this toolkit's trainer), comparable to the ODE's
      and the ELBO's numbers.  A model of dequantized data has spread its density over each cell, so
      its ε̂ near t = 0 does not point at the integers and the discretized bound is far above it.
    The Estimate's logp is on the density scale of the dequantized ODE and ELBO (for 'discretized',
    −nll + D·log(L/2)).  Continuous data (neither given): the Gaussian decoder density,
    bpd = nll/(D ln 2).  stderr: over the data points (it includes the noise of the one ε per term,
    and of sampled steps)."""
    _check_x(x)
    L = resolve_levels(bits, levels)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(map(repr, DECODERS))}, got {decoder!r}")
    repeats = check_int("repeats", repeats)
    if repeats > 1 and not (L and decoder == "dequantized"):
        raise ValueError(f"repeats={repeats} averages over dequantization draws; only decoder='dequantized' on "
                         f"discrete data has them, so use repeats=1")
    t0 = time.perf_counter()
    D = x[0].numel()
    if L and decoder == "dequantized":
        runs = [vlb_terms(score_fn, sde, dequantize(x, levels=L, generator=generator), variance=variance,
                          terms=terms, t_sampling=t_sampling, generator=generator, batch_size=batch_size)
                for _ in range(repeats)]
        out = {k: (torch.stack([r[k] for r in runs]).mean(0) if torch.is_tensor(runs[0][k]) else
                   sum(r[k] for r in runs)) for k in runs[0]}
        nll = out["nll"]
        logp = -nll
        bpd = bits_per_dim(logp, D, levels=L)
    else:
        out = vlb_terms(score_fn, sde, x, variance=variance, levels=L, terms=terms, t_sampling=t_sampling,
                        generator=generator, batch_size=batch_size)
        nll = out["nll"]
        bpd = nll / (D * math.log(2))
        logp = -nll + (D * math.log(L / 2) if L else 0.0)
    N = len(discrete_schedule(sde)[0])
    how = "full sum over all N terms" if terms is None else f"{terms} sampled steps per point ({t_sampling}, importance-weighted)"
    details = dict(prior=out["prior"].mean().item(), kl=out["kl"].mean().item(), decoder_nll=out["decoder"].mean().item(),
                   N=N, variance=variance, terms=terms, t_sampling=t_sampling if terms else None,
                   decoder=(decoder if L else "gaussian"), repeats=repeats)
    return Estimate("vlb", bpd.mean().item(), standard_error(bpd), logp, out["nfe"], out["evals"], time.perf_counter() - t0,
                    len(nll), D, L, f"lower bound on log p of the {N}-step DDPM chain, σ² = "
                    f"{'β̃' if variance == 'beta_tilde' else 'β'} (upper bound on its bits/dim); {how}"
                    + (f", {decoder} decoder" if L else ""), details)


# ----------------------------------------------------------------------------------------------
# The three numbers together
# ----------------------------------------------------------------------------------------------

def ode_estimate(score_fn: Callable, sde, x: torch.Tensor, *, bits: float | None = None, levels: int | None = None,
                 repeats: int = 1, generator: torch.Generator | None = None, **options) -> Estimate:
    """likelihood.bits_per_dim_estimate (the probability-flow ODE) as an Estimate; options go to it
    (method, rtol, atol, eps, probes, batch_size, ...)."""
    L = resolve_levels(bits, levels)
    t0 = time.perf_counter()
    res = bits_per_dim_estimate(score_fn, sde, x, bits=None, levels=L, repeats=repeats, generator=generator, **options)
    how = f"{res.method} divergence" + (", unbiased Hutchinson estimate" if res.method == "hutchinson" else "")
    chunk = options.get("batch_size") or res.n
    solves = repeats * -(-res.n // chunk)  # each solve evaluates the drift on one chunk of points
    return Estimate("ode", res.bpd, res.stderr, res.logp, res.nfe, res.nfe * res.n * repeats // solves,
                    time.perf_counter() - t0, res.n, res.D, L,
                    f"log p_eps of the probability-flow ODE model (an estimate, not a bound); {how}",
                    dict(method=res.method, repeats=repeats))


def likelihood_report(score_fn: Callable, sde, x: torch.Tensor, estimates=ESTIMATES, *, bits: float | None = None,
                      levels: int | None = None, repeats: int = 1, generator: torch.Generator | None = None,
                      ode: dict | None = None, elbo: dict | None = None, vlb: dict | None = None) -> dict:
    """{name: Estimate} for each of `estimates` ('ode', 'elbo', 'vlb') on the same data, in that
    order, with the same bits/levels; `repeats` dequantization draws for the ODE and the ELBO (and
    the VLB with decoder='dequantized'; DDPM's discretized decoder needs none).  ode/elbo/vlb: extra options for ode_estimate,
    continuous_elbo and ddpm_vlb."""
    unknown = [e for e in estimates if e not in ESTIMATES]
    if unknown or not estimates:
        raise ValueError(f"estimates must be a non-empty subset of {', '.join(ESTIMATES)}, got {list(estimates)!r}")
    L = resolve_levels(bits, levels)
    out = {}
    for name in ESTIMATES:
        if name not in estimates:
            continue
        if name == "ode":
            out[name] = ode_estimate(score_fn, sde, x, levels=L, repeats=repeats, generator=generator, **(ode or {}))
        elif name == "elbo":
            out[name] = continuous_elbo(score_fn, sde, x, levels=L, repeats=repeats if L else 1, generator=generator,
                                        **(elbo or {}))
        else:
            opts = dict(vlb or {})
            if L and opts.get("decoder") == "dequantized":
                opts.setdefault("repeats", repeats)
            out[name] = ddpm_vlb(score_fn, sde, x, levels=L, generator=generator, **opts)
    return out

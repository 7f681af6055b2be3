"""Ancestral samplers: DDPM (Ho et al. 2020, Algorithm 2) and DDIM (Song et al. 2021a).

Both step from t = t_i to s = t_{i+1} through the Gaussian posterior q(x_s | x_t, x̂_0) of
the forward transition x_t = α·x_s + σ_{t|s}·z (α = m_t/m_s, σ²_{t|s} = σ_t² − α²σ_s²).
For the VP SDE that is α = √α_i, σ²_{t|s} = β_i, and the DDPM update below.

schedule='continuous' (default) takes m and σ from the SDE's closed form, like every other
solver; schedule='discrete' takes them from DDPM's ᾱ table (VP only, grid times on the 1/N
lattice, else a SolverError), which with N uniform steps to t = 0 is DDPM's Algorithm 2 exactly.
The two differ by up to 3.4 % in σ/m at t = 1 for the default VP SDE.
"""
from __future__ import annotations

import math

from ._common import SolverError


def ddpm(prob, x, *, variance: str = "beta_tilde", schedule: str = "continuous"):
    """DDPM ancestral sampling:  x_s = (x_t − σ²_{t|s}/σ_t · ε̂)/α + ς·z,
    ς² = β̃ = σ²_{t|s}σ_s²/σ_t² (default) or β = σ²_{t|s}; no noise on the last step."""
    if variance not in ("beta_tilde", "beta"):
        raise SolverError(f"variance must be 'beta_tilde' or 'beta', got {variance!r}")
    prob.use_schedule(schedule)
    for i in range(prob.K):
        a, var = prob.transition(i)
        eps = prob.eps(x, i)
        x = (x - var / prob.sigma[i] * eps) / a
        if not prob.last(i):
            tilde = var * prob.sigma[i + 1] ** 2 / prob.sigma[i] ** 2
            x = x + math.sqrt(tilde if variance == "beta_tilde" else var) * prob.noise(x)
        prob.done(i, x)
    return x


def ddim(prob, x, *, eta: float = 0.0, schedule: str = "continuous"):
    """DDIM:  x_s = m_s·x̂_0 + √(σ_s² − ς²)·ε̂ + ς·z,  ς = η·√(σ²_{t|s}σ_s²/σ_t²).
    η = 0 is deterministic: Euler in σ̃ = σ/m on x̃ = x/m (EDM's ODE), = first-order DPM-Solver;
    η = 1 is DDPM with β̃."""
    if not 0 <= eta:
        raise SolverError(f"eta must be >= 0, got {eta!r}")
    prob.use_schedule(schedule)
    for i in range(prob.K):
        _, var = prob.transition(i)
        eps = prob.eps(x, i)
        x0 = prob.x0(x, eps, i)
        sig = eta * math.sqrt(var * prob.sigma[i + 1] ** 2 / prob.sigma[i] ** 2)
        x = prob.m[i + 1] * x0 + math.sqrt(max(prob.sigma[i + 1] ** 2 - sig ** 2, 0.0)) * eps
        if sig > 0 and not prob.last(i):
            x = x + sig * prob.noise(x)
        prob.done(i, x)
    return x

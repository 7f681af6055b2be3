"""Euler and Heun in two parameterizations of the same probability-flow ODE.

`euler`, `heun` (Karras et al. 2022, "EDM", Algorithms 1 and 2) step in the noise level
σ̃ = σ/m on the rescaled state x̃ = x/m, where the ODE reads

    dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃ = ε̂,   D = x̂_0 = (x + σ²s)/m,  x = m·x̃

(for VP, σ̃ = √(1−ᾱ)/√ᾱ; for VE, σ̃ = σ).  Its solutions are nearly straight lines.
`euler_t`, `heun_t` step in t on dx/dt = f·x − ½g²·s, the ODE in the SDE's own variables.
"""
from __future__ import annotations

import math

from scoresde.convert import score_to_eps

from ._common import SolverError


def _edm(prob, x, second_order: bool, S_churn: float, S_tmin: float, S_tmax: float, S_noise: float):
    """EDM's loop.  Churn (Algorithm 2): γ = min(S_churn/K, √2−1) where S_tmin ≤ σ̃_i ≤ S_tmax,
    σ̂ = σ̃_i(1+γ) capped at σ̃(T) (the score is not defined beyond T, so step 0 never churns),
    x̃ ← x̃ + √(σ̂² − σ̃_i²)·S_noise·z (z drawn only on churned steps); then
    d = ε̂(x̃, σ̂);  x̃' = x̃ + (σ̃_{i+1} − σ̂)·d;  and for Heun, unless σ̃_{i+1} = 0,
    x̃' = x̃ + (σ̃_{i+1} − σ̂)·½(d + ε̂(x̃', σ̃_{i+1}))."""
    if S_churn < 0 or S_noise < 0:
        raise SolverError(f"S_churn and S_noise must be >= 0, got {S_churn!r}, {S_noise!r}")
    st = prob.sigma_tilde()
    gamma = min(S_churn / prob.K, math.sqrt(2) - 1)
    x_tilde = x / prob.m[0]
    for i in range(prob.K):
        t, m, sigma, sh = prob.t[i], prob.m[i], prob.sigma_score[i], st[i]
        if gamma > 0 and S_tmin <= st[i] <= S_tmax and st[i] < st[0]:
            sh = min(st[i] * (1 + gamma), st[0])
            t, m, sigma = prob.at_sigma_tilde(sh)
            x_tilde = x_tilde + math.sqrt(sh ** 2 - st[i] ** 2) * S_noise * prob.noise(x_tilde)
        d = score_to_eps(prob.score(m * x_tilde, t), sigma)
        h = st[i + 1] - sh
        x_next = x_tilde + h * d
        if second_order and st[i + 1] > 0:
            m_next = prob.m[i + 1]
            d1 = score_to_eps(prob.score(m_next * x_next, prob.t[i + 1]), prob.sigma_score[i + 1])
            x_next = x_tilde + 0.5 * h * (d + d1)
        x_tilde = x_next
        prob.done(i, prob.m[i + 1] * x_tilde)
    return prob.m[-1] * x_tilde


def heun(prob, x, *, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0):
    """EDM's Heun (Karras et al. 2022, Alg. 1; Alg. 2 with S_churn > 0), in σ̃ on x̃ = x/m:
    d = ε̂(x̃_i, σ̃_i);  x̃' = x̃_i + (σ̃_{i+1} − σ̃_i)·d;
    x̃_{i+1} = x̃_i + (σ̃_{i+1} − σ̃_i)·½(d + ε̂(x̃', σ̃_{i+1}))  (Euler when σ̃_{i+1} = 0)."""
    return _edm(prob, x, True, S_churn, S_tmin, S_tmax, S_noise)


def euler(prob, x, *, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0):
    """EDM's Euler (k-diffusion `sample_euler`), in σ̃ on x̃ = x/m:
    x̃_{i+1} = x̃_i + (σ̃_{i+1} − σ̃_i)·ε̂(x̃_i, σ̃_i).  Without churn this is DDIM (η = 0)."""
    return _edm(prob, x, False, S_churn, S_tmin, S_tmax, S_noise)


def heun_t(prob, x):
    """Heun in t on dx/dt = v = f·x − ½g²·s:  d = v(x, t_i);  x̃ = x − d·Δt;
    x ← x − ½(d + v(x̃, t_{i+1}))·Δt.  A step that lands on σ = 0 keeps the Euler value
    (the score is undefined there)."""
    for i in range(prob.K):
        dt = prob.t[i] - prob.t[i + 1]
        d = prob.pf_velocity(x, i)
        x_euler = x - d * dt
        if prob.sigma[i + 1] > 0:
            x = x - 0.5 * (d + prob.pf_velocity(x_euler, i + 1)) * dt
        else:
            x = x_euler
        prob.done(i, x)
    return x


def euler_t(prob, x):
    """Euler in t on dx/dt = f·x − ½g²·s:  x ← x − v(x, t_i)·Δt (first order)."""
    for i in range(prob.K):
        x = x - prob.pf_velocity(x, i) * (prob.t[i] - prob.t[i + 1])
        prob.done(i, x)
    return x

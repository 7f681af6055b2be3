"""Euler–Maruyama on the reverse-time SDE dx = [f − g²s] dt + g dW̄ (Song et al. 2021, eq. 6)."""
from __future__ import annotations

import math


def _em_step(prob, x, i: int, noise: bool):
    """x ← x − [f·x − g²·s]·Δt (+ g·√Δt·z),  Δt = t_i − t_{i+1} > 0."""
    dt = prob.t[i] - prob.t[i + 1]
    x = x - (prob.f[i] * x - prob.g2[i] * prob.score(x, prob.t[i])) * dt
    return x + math.sqrt(prob.g2[i] * dt) * prob.noise(x) if noise else x


def euler_maruyama(prob, x, *, noise_last: bool = False):
    """x ← x − [f·x − g²·s]·Δt + g·√Δt·z,  Δt = t_i − t_{i+1} > 0.

    The last step adds no noise unless noise_last=True (score_sde's noise removal: the final
    noise at t = eps would only blur the samples)."""
    for i in range(prob.K):
        x = _em_step(prob, x, i, noise_last or not prob.last(i))
        prob.done(i, x)
    return x


def predictor_corrector(prob, x, *, snr: float = 0.16, corrector_steps: int = 1):
    """PC sampling (Song et al. 2021, Alg. 2/3): Langevin corrector(s) at t_i, then an
    Euler–Maruyama predictor.  Corrector step ε = 2α(snr·‖z‖/‖s‖)², α = (m_t/m_s)² (1 for VE):
    x ← x + ε·s + √(2ε)·z."""
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr!r}")
    for i in range(prob.K):
        alpha = (prob.m[i] / prob.m[i + 1]) ** 2
        for _ in range(corrector_steps):
            s = prob.score(x, prob.t[i])
            z = prob.noise(x)
            ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean()
            step = 2 * alpha * (snr * ratio) ** 2
            x = x + step * s + (2 * step).sqrt() * z
        x = _em_step(prob, x, i, not prob.last(i))
        prob.done(i, x)
    return x

"""Euler–Maruyama on the reverse-time SDE dx = [f − g²s] dt + g dW̄ (Song et al. 2021, eq. 6),
and predictor–corrector sampling (Song et al. 2021, Alg. 2/3)."""
from __future__ import annotations

import math

from ._common import SolverError


def _em_step(prob, x, i: int, noise: bool):
    """x ← x − [f·x − g²·s]·Δt (+ g·√Δt·z),  Δt = t_i − t_{i+1} > 0."""
    dt = prob.t[i] - prob.t[i + 1]
    x = x - (prob.f[i] * x - prob.g2[i] * prob.score(x, prob.t[i])) * dt
    return x + math.sqrt(prob.g2[i] * dt) * prob.noise(x) if noise else x


def _reverse_diffusion_step(prob, x, i: int, noise: bool):
    """x ← (2 − a)·x + G²·s (+ G·z), with x_{t_i} = a·x_{t_{i+1}} + G·z the forward transition:
    a = m_i/m_{i+1}, G² = σ_i² − a²σ_{i+1}² (VE: G² = σ_i² − σ_{i+1}²; VP: a = √(1 − β), G² = β)."""
    a, var = prob.transition(i)
    x = (2 - a) * x + var * prob.score(x, prob.t[i])
    return x + math.sqrt(var) * prob.noise(x) if noise else x


def euler_maruyama(prob, x, *, noise_last: bool = False):
    """x ← x − [f·x − g²·s]·Δt + g·√Δt·z,  Δt = t_i − t_{i+1} > 0.

    The last step adds no noise unless noise_last=True (score_sde's noise removal: the final
    noise at t = eps would only blur the samples)."""
    for i in range(prob.K):
        x = _em_step(prob, x, i, noise_last or not prob.last(i))
        prob.done(i, x)
    return x


PREDICTORS = {"reverse_diffusion": _reverse_diffusion_step, "euler_maruyama": _em_step}


def predictor_corrector(prob, x, *, snr: float = 0.16, corrector_steps: int = 1,
                        predictor: str = "reverse_diffusion"):
    """PC sampling (Song et al. 2021, Alg. 2/3, in score_sde's order): Langevin corrector(s) at
    t_i, then a predictor step to t_{i+1} (no noise on the last one).
    Corrector: ε = 2α(snr·‖z‖/‖s‖)² (norms averaged over the batch), α = (m_{i+1}/m_i)² (1 for
    VE), x ← x + ε·s + √(2ε)·z.
    Predictor 'reverse_diffusion' (Alg. 2/3, score_sde's default for VE): x ← (2 − a)·x + G²·s + G·z,
    a = m_i/m_{i+1}, G² = σ_i² − a²σ_{i+1}²; where σ ≫ the data, x ≈ σ·z and s ≈ −x/σ², it
    shrinks x by σ_{i+1}²/σ_i² ∈ (0, 1): stable for every grid.  'euler_maruyama':
    x ← x − [f·x − g²·s]Δt + g√Δt·z, whose factor there, 1 − (f + g²/σ²)Δt, is below −1 (the
    samples blow up) when Δt > 1/ln(σ_max/σ_min) on VE: fewer than ≈ 9 uniform steps."""
    if snr <= 0:
        raise SolverError(f"snr must be > 0, got {snr!r}")
    if predictor not in PREDICTORS:
        raise SolverError(f"predictor must be one of {', '.join(map(repr, PREDICTORS))}, got {predictor!r}")
    step_to = PREDICTORS[predictor]
    for i in range(prob.K):
        alpha = (prob.m[i] / prob.m[i + 1]) ** 2
        for _ in range(corrector_steps):
            s = prob.score(x, prob.t[i])
            z = prob.noise(x)
            ratio = z.flatten(1).norm(dim=1).mean() / s.flatten(1).norm(dim=1).mean()
            step = 2 * alpha * (snr * ratio) ** 2
            x = x + step * s + (2 * step).sqrt() * z
        x = step_to(prob, x, i, not prob.last(i))
        prob.done(i, x)
    return x

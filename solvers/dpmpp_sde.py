"""SDE-DPM-Solver++(2M) (Lu et al. 2022b, App. B; k-diffusion `sample_dpmpp_2m_sde`): the
second-order multistep solver of the reverse SDE, exact in its linear and noise parts."""
from __future__ import annotations

import math

from ._common import SolverError


def dpmpp_2m_sde(prob, x, *, eta: float = 1.0, solver_type: str = "midpoint"):
    """h = λ_{i+1} − λ_i,  r = h_{i−1}/h,  e = 1 − e^{−(1+η)h}:
        x_{i+1} = (σ_{i+1}/σ_i)·e^{−ηh}·x_i + m_{i+1}·e·x̂_0(t_i)
                  + m_{i+1}·c·(x̂_0(t_i) − x̂_0(t_{i−1}))/r + σ_{i+1}·√(1 − e^{−2ηh})·z,
    c = ½e ('midpoint', default) or 1 − e/((1+η)h) ('heun'); both are ½(1+η)h + O(h²).
    η = 1 is the SDE solver; η = 0 is DPM-Solver++(2M) without its lower-order final step.
    The first step is first order; the last adds no noise (like every sampler here) and is
    first order when it lands on σ = 0."""
    if eta < 0:
        raise SolverError(f"eta must be >= 0, got {eta!r}")
    if solver_type not in ("midpoint", "heun"):
        raise SolverError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    lam = prob.lam()
    x0_prev, h_prev = None, None
    for i in range(prob.K):
        x0 = prob.x0(x, prob.eps(x, i), i)
        if prob.sigma[i + 1] == 0:
            x = prob.m[i + 1] * x0
        else:
            h = lam[i + 1] - lam[i]
            e = -math.expm1(-(1 + eta) * h)
            x = (prob.sigma[i + 1] / prob.sigma[i]) * math.exp(-eta * h) * x + prob.m[i + 1] * e * x0
            if x0_prev is not None:
                c = 0.5 * e if solver_type == "midpoint" else 1 - e / ((1 + eta) * h)
                x = x + prob.m[i + 1] * c * (h / h_prev) * (x0 - x0_prev)
            if eta > 0 and not prob.last(i):
                x = x + prob.sigma[i + 1] * math.sqrt(-math.expm1(-2 * eta * h)) * prob.noise(x)
            h_prev = h
        x0_prev = x0
        prob.done(i, x)
    return x

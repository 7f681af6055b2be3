"""DPM-Solver++(2M) (Lu et al. 2022b): multistep second order in λ = log(m/σ) with the data
prediction x̂_0, exact for the linear part of the probability-flow ODE."""
from __future__ import annotations

import math


def dpmpp_2m(prob, x, *, lower_order_final: bool = True):
    """h = λ_{i+1} − λ_i,  r = h_{i−1}/h,
    D = (1 + 1/(2r))·x̂_0(t_i) − 1/(2r)·x̂_0(t_{i−1})  (D = x̂_0(t_i) on the first step),
    x_{i+1} = (σ_{i+1}/σ_i)·x_i − m_{i+1}·(e^{−h} − 1)·D.
    The last step is first order when it lands on σ = 0 or when K < 15 (DPM-Solver's advice)."""
    lam = [math.log(m / s) if s > 0 else math.inf for m, s in zip(prob.m, prob.sigma)]
    x0_prev, h_prev = None, None
    for i in range(prob.K):
        x0 = prob.x0(x, prob.eps(x, i), i)
        h = lam[i + 1] - lam[i]
        first_order = x0_prev is None or (prob.last(i) and (prob.sigma[i + 1] == 0 or lower_order_final and prob.K < 15))
        D = x0 if first_order else (1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * x0_prev
        x = (prob.sigma[i + 1] / prob.sigma[i]) * x - prob.m[i + 1] * math.expm1(-h) * D
        x0_prev, h_prev = x0, h
        prob.done(i, x)
    return x

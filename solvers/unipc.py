"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"): the UniP-p
predictor and the UniC-p corrector on the data prediction x̂_0, multistep in λ = log(m/σ).
The corrector reuses the evaluation at the predicted point, so K steps cost K evaluations."""
from __future__ import annotations

import math

import numpy as np

from ._common import SolverError


def _uni_step(prob, lam, j, x, hist, p, variant, x0_new=None):
    """x at t_j → t_{j+1} with p history points (λ_k, x̂_k) at t_j, t_{j−1}, … (hist, newest last),
    x̂_k the x̂₀ estimate at t_{j−k}.  With hh = −h, h = λ_{j+1} − λ_j, r_k = (λ_{j−k} − λ_j)/h,
    D_k = (x̂_k − x̂_0)/r_k:
        x = (σ_{j+1}/σ_j)·x_j − m_{j+1}(e^{hh} − 1)·x̂_0 − m_{j+1}·B(h)·Σ_k ρ_k D_k,
    B(h) = hh ('bh1') or e^{hh} − 1 ('bh2'); ρ solves R ρ = g/B, R_{ik} = r_k^{i−1},
    g_i = hh·φ_{i+1}(hh)·i!.  UniP-p uses the p − 1 history differences; UniC-p adds r_p = 1,
    D_p = x̂₀(t_{j+1}) − x̂_0 (x0_new) and solves all p.  A single ρ is ½ (UniP-2, UniC-1), as in
    the paper's code; where ρ is solved, B(h) cancels, so bh1 and bh2 differ only there."""
    lam_s, x0_hat = hist[-1]
    h = lam[j + 1] - lam_s
    x_lin = (prob.sigma[j + 1] / prob.sigma[j]) * x - prob.m[j + 1] * math.expm1(-h) * x0_hat
    n = p if x0_new is not None else p - 1  # number of ρ's
    if n == 0:
        return x_lin
    rks = [(hist[-1 - k][0] - lam_s) / h for k in range(1, p)]
    ds = [(hist[-1 - k][1] - x0_hat) / r for k, r in zip(range(1, p), rks)]
    if x0_new is not None:
        rks, ds = rks + [1.0], ds + [x0_new - x0_hat]
    hh = -h
    B = hh if variant == "bh1" else math.expm1(hh)
    g, phi, fact = [], math.expm1(hh) / hh - 1, 1.0
    for i in range(1, n + 1):
        g.append(phi * fact / B)
        fact *= i + 1
        phi = phi / hh - 1 / fact
    if n == 1:
        rho = [0.5]
    else:
        R = np.array([[r ** i for r in rks] for i in range(n)])
        rho = np.linalg.solve(R, np.array(g)).tolist()
    return x_lin - prob.m[j + 1] * B * sum(r * d for r, d in zip(rho, ds))


def unipc(prob, x, *, order: int = 2, variant: str = "bh2", corrector: bool = True,
          lower_order_final: bool = True):
    """UniPC-p: at each t_i, x̂_0(x_i) first corrects x_i (UniC, the order of the step that made
    it), then UniP-p predicts x_{i+1}; the x̂_0 kept for the history is the one at the
    uncorrected x_i (one evaluation per step).  The last step is not corrected.  UniC raises the
    order by one: UniP-p alone is order p, UniPC-p order p + 1.  Orders follow
    Problem.multistep_order (warm-up, lower orders at the end when K < 15, σ = 0)."""
    if order not in (1, 2, 3):
        raise SolverError(f"order must be 1, 2 or 3, got {order!r}")
    if variant not in ("bh1", "bh2"):
        raise SolverError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    lam = prob.lam()
    hist, x_prev, p_prev = [], None, 0
    for i in range(prob.K):
        x0 = prob.x0(x, prob.eps(x, i), i)
        if corrector and x_prev is not None:
            x = _uni_step(prob, lam, i - 1, x_prev, hist, p_prev, variant, x0_new=x0)
        hist = (hist + [(lam[i], x0)])[-order:]
        p_prev, x_prev = prob.multistep_order(i, order, lower_order_final), x
        x = _uni_step(prob, lam, i, x, hist, p_prev, variant)
        prob.done(i, x)
    return x

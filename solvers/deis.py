"""DEIS in EDM's variables, ρAB-DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
Exponential Integrator", §4): Adams–Bashforth with variable steps on dx̃/dσ̃ = ε̂, x̃ = x/m,
σ̃ = σ/m, whose linear part is zero in these variables, so the weights are plain polynomial
integrals."""
from __future__ import annotations

import math

from ._common import SolverError

_GAUSS2 = ((-1 / math.sqrt(3), 1.0), (1 / math.sqrt(3), 1.0))  # exact for degree ≤ 3


def _lagrange_weights(nodes: list[float], a: float, b: float) -> list[float]:
    """c_j = ∫_a^b ℓ_j(σ) dσ, ℓ_j the Lagrange basis polynomial on `nodes` (≤ 3 of them)."""
    mid, half = 0.5 * (a + b), 0.5 * (b - a)
    out = []
    for j, nj in enumerate(nodes):
        def ell(s):
            return math.prod((s - nk) / (nj - nk) for k, nk in enumerate(nodes) if k != j)
        out.append(half * sum(w * ell(mid + half * xi) for xi, w in _GAUSS2))
    return out


def deis(prob, x, *, order: int = 3, lower_order_final: bool = True):
    """x̃_{i+1} = x̃_i + Σ_j c_j·ε̂(t_{i−j}),  c_j = ∫_{σ̃_i}^{σ̃_{i+1}} ℓ_j(σ̃) dσ̃,
    ℓ_j the Lagrange basis through σ̃_i, …, σ̃_{i−p+1}; order p = 1 is EDM's Euler (= DDIM).
    Orders follow Problem.multistep_order (warm-up, lower orders at the end when K < 15)."""
    if order not in (1, 2, 3):
        raise SolverError(f"order must be 1, 2 or 3, got {order!r}")
    st = prob.sigma_tilde()
    x_tilde, hist = x / prob.m[0], []
    for i in range(prob.K):
        hist = (hist + [(st[i], prob.eps(prob.m[i] * x_tilde, i))])[-order:]
        use = hist[-prob.multistep_order(i, order, lower_order_final):]
        w = _lagrange_weights([s for s, _ in use], st[i], st[i + 1])
        x_tilde = x_tilde + sum(c * e for c, (_, e) in zip(w, use))
        prob.done(i, prob.m[i + 1] * x_tilde)
    return prob.m[-1] * x_tilde

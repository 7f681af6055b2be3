"""Time grids T = t_0 > t_1 > … > t_K = eps shared by every sampler (float64).

uniform   t_i = T + (i/K)(eps − T)
quadratic t_i = (√T + (i/K)(√eps − √T))²                      denser near the data (DDIM)
edm       r_i = (r_T^{1/ρ} + (i/K)(r_eps^{1/ρ} − r_T^{1/ρ}))^ρ, r = σ/m, ρ = 7 (Karras et al.)
logsnr    λ_i uniform between λ(T) and λ(eps), λ = log(m/σ)     (DPM-Solver)
"""
from __future__ import annotations

import torch

GRIDS = {
    "uniform": "uniform in t",
    "quadratic": "uniform in √t: denser near the data (DDIM's quadratic spacing)",
    "edm": "Karras et al.'s ρ = 7 spacing of the noise level σ/m",
    "logsnr": "uniform in log-SNR λ = log(m/σ) (DPM-Solver's choice)",
}


def time_grid(sde, steps: int, kind: str = "uniform", eps: float = 1e-3, rho: float = 7.0,
              device=None) -> torch.Tensor:
    """K+1 = steps+1 decreasing times from sde.T to eps (float64)."""
    from ._common import SolverError

    if kind not in GRIDS:
        raise SolverError(f"unknown time grid {kind!r}; choose one of: {', '.join(GRIDS)}")
    T = sde.T
    if not 0 <= eps < T:
        raise SolverError(f"eps must satisfy 0 <= eps < T = {T}, got {eps!r}")
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        ts = T + u * (eps - T)
    elif kind == "quadratic":
        ts = (T ** 0.5 + u * (eps ** 0.5 - T ** 0.5)) ** 2
    else:
        ends = torch.tensor([T, eps], dtype=torch.float64)
        lam = sde._log_snr(ends)
        if not torch.isfinite(lam).all():
            raise SolverError(f"the {kind!r} grid needs a finite log-SNR at eps; eps={eps} gives σ = 0, "
                              f"use eps > 0 (e.g. {sde.default_eps})")
        if kind == "edm":
            r = torch.exp(-lam) ** (1 / rho)
            lam_i = -rho * torch.log(r[0] + u * (r[1] - r[0]))
        else:
            lam_i = lam[0] + u * (lam[1] - lam[0])
        ts = sde.t_from_log_snr(lam_i)
    ts[0], ts[-1] = T, eps  # exact ends, free of bisection round-off
    return ts.to(device)

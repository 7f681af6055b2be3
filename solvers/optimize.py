"""Time grids fitted to a solver: the grid that minimizes the solver's global error.

For a deterministic solver S with K steps on the grid T = t_0 > … > t_K = eps, the global error
on a batch of starting points x_T is measured against a high-accuracy solution Φ of the same
probability-flow ODE (adaptive dopri5, tight tolerances) from the same x_T:

    E(t_1 … t_{K−1}) = √( mean_b ‖S(x_T^b; t) − Φ(x_T^b)‖² ).

The interior times are parametrized by the increments of the monotone map c(t) = (σ/m)^{1/ρ}
(EDM's coordinate, ρ = 7; finite at σ = 0):  c_i = c_0 − (c_0 − c_K)·Σ_{j<i} w_j with
w = δ + (1 − Kδ)·softmax(θ), δ = 10⁻³/K, so every grid is strictly decreasing and hits both ends.
θ starts from the best named grid on the fitting batch and is fitted with Nelder–Mead (scipy),
derivative-free because the solver's coefficients are computed from the grid outside autograd.
All draws come from one seeded generator; the result is scored on fresh draws, never on the
fitting batch.  In the spirit of "Align Your Steps" (Sabour et al. 2024), which fits grids to a
KL bound for stochastic samplers; here only deterministic solvers are fitted.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from scoresde.convert import x0_from_score

from ._common import SolverError
from .grids import GRIDS, time_grid

RHO = 7.0
SIMPLEX_STEP = 0.3


@dataclass
class GridFit:
    """An optimized grid and the evidence for it.  Errors are RMS distances to the reference
    ODE solution on `n_eval` fresh starting points (not the fitting batch)."""

    t_grid: torch.Tensor
    solver: str
    steps: int
    nfe: int
    denoise: bool
    error: float
    init_grid: str
    init_error: float
    named_errors: dict = field(default_factory=dict)  # held-out error of every named grid
    fit_error: float = math.nan
    evaluations: int = 0
    wall_s: float = 0.0
    seed: int = 0
    options: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "t_grid"}
        return dict(t_grid=self.t_grid.tolist(), **out)


def _coord(sde, ts: torch.Tensor) -> torch.Tensor:
    """c(t) = (σ/m)^{1/ρ} = exp(−λ/ρ), 0 where σ = 0."""
    return torch.exp(-sde._log_snr(ts) / RHO)


class _Param:
    """θ ∈ R^{K−1} ↦ grid.  t(c) is read off a dense monotone table (piecewise linear), which is
    exact at the table points and ~1000× cheaper than bisection; any monotone map serves as a
    parametrization, and the grid it yields is what gets scored."""

    def __init__(self, sde, eps: float, table: int = 4097):
        self.T, self.eps = sde.T, eps
        u = torch.linspace(0, 1, table, dtype=torch.float64)
        self.t_tab = eps + (sde.T - eps) * u ** 2  # dense near the data, where the grids are
        self.c_tab = _coord(sde, self.t_tab).numpy()
        self.t_tab = self.t_tab.numpy()
        self.c0, self.cK = float(self.c_tab[-1]), float(self.c_tab[0])

    def grid(self, theta: np.ndarray) -> torch.Tensor:
        K = theta.size + 1
        delta = 1e-3 / K
        w = np.exp(np.concatenate([[0.0], theta]) - max(0.0, theta.max()))
        w = delta + (1 - K * delta) * w / w.sum()
        c = self.c0 - (self.c0 - self.cK) * np.cumsum(w)[:-1]
        ts = np.interp(c, self.c_tab, self.t_tab)
        return torch.as_tensor(np.concatenate([[self.T], ts, [self.eps]]), dtype=torch.float64)


def _theta_from_grid(sde, ts: torch.Tensor) -> np.ndarray:
    c = _coord(sde, ts).numpy()
    K = c.size - 1
    delta = 1e-3 / K
    w = np.maximum(((c[:-1] - c[1:]) / (c[0] - c[-1]) - delta) / (1 - K * delta), 1e-12)
    return np.log(w[1:] / w[0])


def _is_stochastic(run: Callable) -> bool:
    return not torch.equal(run(1), run(2))


def steps_for_nfe(sample: Callable, score_fn, sde, solver: str, nfe: int, x_probe: torch.Tensor, grid: str,
                  eps: float, denoise: bool, options: dict) -> tuple[int, int]:
    """The largest step count K whose solve (by `sample`, i.e. solvers.sample) uses at most `nfe`
    evaluations, and its nfe."""
    for K in range(nfe, 0, -1):
        used = sample(score_fn, sde, x_T=x_probe, solver=solver, steps=K, grid=grid, eps=eps, denoise=denoise,
                      generator=torch.Generator(device=x_probe.device).manual_seed(0), **options).nfe
        if used <= nfe:
            return K, used
    raise SolverError(f"solver {solver!r} needs more than nfe={nfe} evaluations for a single step"
                      f"{' plus the denoising one' if denoise else ''}; raise nfe")


def reference_solution(sample: Callable, score_fn, sde, x_T: torch.Tensor, eps: float, denoise: bool,
                       rtol: float = 1e-7):
    """Φ(x_T): the probability-flow ODE from T to eps by adaptive dopri5 (rtol = atol) through
    `sample` (solvers.sample).  Where the grid ends at σ = 0 (eps = 0), or the solver denoises, the
    ODE runs to max(eps, 1e-5) and ends with Tweedie's x̂_0 = (x + σ²s)/m, the limit the solvers'
    last step approximates."""
    end = max(eps, sde.likelihood_eps)
    res = sample(score_fn, sde, x_T=x_T, solver="pf_ode", steps=1, grid="uniform", eps=end, rtol=rtol, atol=rtol)
    x = res.x
    if denoise or eps == 0:
        t = torch.full((x.shape[0],), end, dtype=x.dtype, device=x.device)
        m, s = sde.marginal(t)
        x = x0_from_score(x, score_fn(x, t), m, s)
    return x


def optimize_grid(score_fn: Callable, sde, *, sample: Callable, solver: str = "dpmpp_2m", nfe: int = 10, shape=None,
                  denoise: bool = False, eps: float | None = None, init: str | None = None, n_fit: int = 256,
                  n_eval: int = 1024, seed: int = 0, max_evals: int | None = None, rtol: float = 1e-7,
                  dtype: torch.dtype = torch.float64, device=None, options: dict | None = None,
                  progress: Callable | None = None) -> GridFit:
    """Fit the time grid of `solver` at a budget of `nfe` score evaluations (see the module doc).

    shape: one sample's shape, e.g. (2,); denoise: the solver ends with Tweedie's x̂_0 (one of
    the nfe); eps: end time (default: the solver's); init: named grid to start from (default:
    the best named grid on the fitting batch); n_fit / n_eval: fitting batch and fresh evaluation
    batch sizes; max_evals: Nelder–Mead evaluations (default 150·(K−1)); options: the solver's.
    sample: the package's solvers.sample (handed in by solvers.optimize_grid, which is what users
    call; this module cannot import the package that re-exports it).
    Returns a GridFit; `solvers.sample(..., grid=fit.t_grid)` uses the grid.
    """
    from scipy.optimize import minimize

    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise SolverError(f"nfe must be an integer >= 1, got {nfe!r}")
    if shape is None:
        raise SolverError("give shape=(D, ...), one sample's shape, e.g. (2,) for the ring")
    if init is not None and init not in GRIDS:
        raise SolverError(f"unknown init grid {init!r}; choose one of: {', '.join(GRIDS)}")
    options = dict(options or {})
    if solver == "pf_ode" and options.get("method", "dopri5") in ("dopri5", "dopri8", "bosh3", "fehlberg2",
                                                                 "adaptive_heun", "tsit5"):
        raise SolverError("pf_ode with an adaptive method chooses its own steps; pass options="
                          "{'method': 'rk4'} (or another fixed-step method) to fit its grid")
    t0 = time.perf_counter()
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    x_fit = sde.prior_sample((n_fit, *shape), generator=g, dtype=dtype, device=device)
    x_eval = sde.prior_sample((n_eval, *shape), generator=g, dtype=dtype, device=device)  # fresh draws
    if eps is None:  # the solver's own end time, as sample() chooses it
        eps = float(sample(score_fn, sde, x_T=x_fit[:1], solver=solver, steps=1, grid="uniform",
                           generator=torch.Generator(device=x_fit.device).manual_seed(0), **options).t_grid[-1])
    eps = float(eps)
    named = [k for k in GRIDS if not (eps == 0 and k in ("edm", "logsnr"))]
    K, used = steps_for_nfe(sample, score_fn, sde, solver, nfe, x_fit[:2], init or named[0], eps, denoise, options)

    def run(x_T, ts, noise_seed=0):
        return sample(score_fn, sde, x_T=x_T, solver=solver, grid=ts, denoise=denoise,
                      generator=torch.Generator(device=x_T.device).manual_seed(noise_seed), **options).x

    probe_ts = time_grid(sde, K, named[0], eps)
    if _is_stochastic(lambda s: run(x_fit[:4], probe_ts, s)):
        raise SolverError(f"solver {solver!r} draws noise with these options; optimize_grid fits the pathwise "
                          f"error of a deterministic solver (e.g. ddim, euler, heun, dpmpp_2m)")
    ref_fit = reference_solution(sample, score_fn, sde, x_fit, eps, denoise, rtol)
    ref_eval = reference_solution(sample, score_fn, sde, x_eval, eps, denoise, rtol)

    def error(x, ref):
        e = (x - ref).flatten(1).pow(2).sum(1).mean().sqrt()
        return float(e) if torch.isfinite(e) else 1e10

    def fit_error(ts):
        try:
            return error(run(x_fit, ts), ref_fit)
        except SolverError:  # a grid on which the solver blows up scores as very bad
            return 1e10

    grids = {k: time_grid(sde, K, k, eps) for k in named}
    start = init or min(grids, key=lambda k: fit_error(grids[k]))
    best_ts, best_err, evals = grids[start], fit_error(grids[start]), 0
    if K >= 2:
        param = _Param(sde, eps)

        def objective(theta):
            nonlocal evals
            evals += 1
            err = fit_error(param.grid(theta))
            if progress is not None:
                progress(evals, err)
            return err

        theta = _theta_from_grid(sde, grids[start])
        budget = max_evals or 150 * (K - 1)
        while evals < budget:  # restart from the last simplex's best: Nelder–Mead stalls on ridges
            # scipy's default simplex steps 5 % of each θ_j and 2.5e-4 where θ_j = 0 (the edm grid is
            # θ = 0): too small to leave the start; 0.3 changes a step's share by ~35 %
            simplex = np.vstack([theta, theta + SIMPLEX_STEP * np.eye(theta.size)])
            out = minimize(objective, theta, method="Nelder-Mead",
                           options=dict(maxfev=budget - evals, xatol=1e-3, fatol=1e-6 * best_err, adaptive=K > 4,
                                        initial_simplex=simplex))
            if out.fun >= best_err * (1 - 1e-4):
                break
            theta, best_ts, best_err = out.x, param.grid(out.x), float(out.fun)
    named_errors = {k: error(run(x_eval, ts), ref_eval) for k, ts in grids.items()}
    return GridFit(t_grid=best_ts, solver=solver, steps=K, nfe=used, denoise=denoise,
                   error=error(run(x_eval, best_ts), ref_eval), init_grid=start, init_error=named_errors[start],
                   named_errors=named_errors, fit_error=best_err, evaluations=evals,
                   wall_s=time.perf_counter() - t0, seed=seed, options=options)

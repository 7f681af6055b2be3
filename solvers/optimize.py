"""Time grids fitted to a solver: the grid that minimizes one of two objectives.

objective="pathwise" (default; deterministic solvers).  For a solver S with K steps on the grid
T = t_0 > … > t_K = eps, the global error on a batch of starting points x_T is measured against a
high-accuracy solution Φ of the same probability-flow ODE (adaptive dopri5, tight tolerances)
from the same x_T:

    E(t_1 … t_{K−1}) = √( mean_b ‖S(x_T^b; t) − Φ(x_T^b)‖² ).

objective="klub" (any solver, meant for the stochastic ones).  The KL upper bound of "Align
Your Steps" (Sabour et al. 2024; solvers.klub has the derivation) between the exact reverse SDE
and its first-order discretization on the grid, in σ̃ = σ/m and x̃ = x/m:

    KLUB(t) = Σ_i ∫_{σ̃_{i+1}}^{σ̃_i} E‖D(x̃_σ̃, σ̃) − D(x̃_{σ̃_i}, σ̃_i)‖² / σ̃³ dσ̃ ≥ KL(p_exact ‖ p_grid),

D = x̂_0, x_0 ~ data, x̃_σ̃ = x_0 + σ̃·z₁, x̃_{σ̃_i} = x̃_σ̃ + √(σ̃_i² − σ̃²)·z₂; estimated with
importance sampling over σ̃ on draws fixed for the whole fit.  It needs data samples, not a
reference solve, and depends on the solver only through K and eps.  The bound is loose where
σ̃ is far below the data's scale (a step there costs about as much as its ratio σ̃_i/σ̃_{i+1}
says, whatever its effect on the samples), so minimizing it to the end moves steps there; AYS
stop early for that reason (their App. A.3), which max_evals does here
(experiments/klub_grids.py measures it).

Both share the fitting below.  The interior times are parametrized by the increments of the
monotone map c(t) = (σ/m)^{1/ρ} (EDM's coordinate, ρ = 7; finite at σ = 0):
c_i = c_0 − (c_0 − c_K)·Σ_{j<i} w_j with w = δ + (1 − Kδ)·softmax(θ), δ = 10⁻³/K, so every grid
is strictly decreasing and hits both ends.  θ starts from the best named grid on the fitting
draws and is fitted with Nelder–Mead (scipy), restarted while it improves; derivative-free
because the solver's coefficients are computed from the grid outside autograd.  All draws come
from one seeded generator; the result is scored on fresh draws, never on the fitting ones.
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
from .grids import GRIDS, edm_coord, time_grid
from .klub import KLUB

SIMPLEX_STEP = 0.3


@dataclass
class GridFit:
    """An optimized grid and the evidence for it, all on fresh draws (not the fitting ones).
    objective="pathwise": errors are RMS distances to the reference ODE solution on `n_eval`
    starting points; objective="klub": KL upper bounds on `n_eval` draws per step.  The fields
    of the other objective are NaN (or empty) and left out of to_json()."""

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
    objective: str = "pathwise"
    klub: float = math.nan  # held-out KLUB of the fitted grid
    init_klub: float = math.nan
    named_klubs: dict = field(default_factory=dict)  # held-out KLUB of every named grid
    fit_klub: float = math.nan

    def to_json(self) -> dict:
        other = _FIELDS["klub" if self.objective == "pathwise" else "pathwise"]
        out = {k: v for k, v in self.__dict__.items() if k != "t_grid" and k not in other}
        return dict(t_grid=self.t_grid.tolist(), **out)


_FIELDS = {"pathwise": ("error", "init_error", "named_errors", "fit_error"),
           "klub": ("klub", "init_klub", "named_klubs", "fit_klub")}
OBJECTIVES = tuple(_FIELDS)


class _Param:
    """θ ∈ R^{K−1} ↦ grid.  t(c) is read off a dense monotone table (piecewise linear), which is
    exact at the table points and ~1000× cheaper than bisection; any monotone map serves as a
    parametrization, and the grid it yields is what gets scored."""

    def __init__(self, sde, eps: float, table: int = 4097):
        self.T, self.eps = sde.T, eps
        u = torch.linspace(0, 1, table, dtype=torch.float64)
        self.t_tab = eps + (sde.T - eps) * u ** 2  # dense near the data, where the grids are
        self.c_tab = edm_coord(sde, self.t_tab).numpy()
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
    c = edm_coord(sde, ts).numpy()
    K = c.size - 1
    delta = 1e-3 / K
    w = np.maximum(((c[:-1] - c[1:]) / (c[0] - c[-1]) - delta) / (1 - K * delta), 1e-12)
    return np.log(w[1:] / w[0])


def steps_for_nfe(sample: Callable, score_fn, sde, solver: str, nfe: int, x_probe: torch.Tensor, grid: str,
                  eps: float, denoise: bool, options: dict) -> tuple[int, int]:
    """The largest step count K whose solve (by `sample`, i.e. solvers.sample) uses at most `nfe`
    evaluations, and its nfe (options may hold afs=True, whose first step is free: K up to nfe + 1)."""
    for K in range(nfe + 1, 0, -1):
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


def _fit_loop(objective: Callable, sde, eps: float, grids: dict, init: str | None, K: int,
              max_evals: int | None, progress: Callable | None):
    """Shared by both objectives: start from `init` (default: the named grid with the lowest
    objective), then Nelder–Mead over θ (see _Param), restarted from the last simplex's best while
    it improves.  Returns (start, best grid, its objective, evaluations)."""
    from scipy.optimize import minimize

    start = init or min(grids, key=lambda k: objective(grids[k]))
    best_ts, best_val, evals = grids[start], objective(grids[start]), 0
    if K >= 2:
        param = _Param(sde, eps)

        def f(theta):
            nonlocal evals
            evals += 1
            val = objective(param.grid(theta))
            if progress is not None:
                progress(evals, val)
            return val

        theta = _theta_from_grid(sde, grids[start])
        budget = max_evals or 150 * (K - 1)
        while evals < budget:  # restart from the last simplex's best: Nelder–Mead stalls on ridges
            # scipy's default simplex steps 5 % of each θ_j and 2.5e-4 where θ_j = 0 (the edm grid is
            # θ = 0): too small to leave the start; 0.3 changes a step's share by ~35 %
            simplex = np.vstack([theta, theta + SIMPLEX_STEP * np.eye(theta.size)])
            out = minimize(f, theta, method="Nelder-Mead",
                           options=dict(maxfev=budget - evals, xatol=1e-3, fatol=1e-6 * best_val, adaptive=K > 4,
                                        initial_simplex=simplex))
            if out.fun >= best_val * (1 - 1e-4):
                break
            theta, best_ts, best_val = out.x, param.grid(out.x), float(out.fun)
    return start, best_ts, best_val, evals


def _data_draws(data, shape, generator: torch.Generator, dtype, device):
    """(draw_fit, draw_eval): n ↦ (n, *shape) samples of x_0.  A tensor of samples is shuffled
    and split in halves, fit and held-out, each drawn from with replacement; a callable
    data(n) (given generator= when it takes one, like GaussianMixture.sample) is fresh each call."""
    import inspect

    def checked(x, n):
        if not torch.is_tensor(x) or tuple(x.shape) != (n, *shape):
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise SolverError(f"data must give samples of shape (n, {', '.join(map(str, shape))}), got {got}")
        x = x.to(dtype=dtype, device=device)
        if not torch.isfinite(x).all():
            raise SolverError("data samples must be finite")
        return x

    if torch.is_tensor(data):
        if data.shape[0] < 2:
            raise SolverError(f"data needs at least 2 samples (half to fit on, half held out), got {data.shape[0]}")
        where = generator.device  # indices are drawn where the generator lives, then follow the data
        perm = torch.randperm(data.shape[0], generator=generator, device=where)
        pools = perm[: data.shape[0] // 2], perm[data.shape[0] // 2:]

        def pick(p, n):
            i = p[torch.randint(p.numel(), (n,), generator=generator, device=where)]
            return checked(data[i.to(data.device)], n)

        return tuple((lambda n, p=p: pick(p, n)) for p in pools)
    if not callable(data):
        raise SolverError(f"data must be a tensor of samples (N, ...) or a callable n -> samples, "
                          f"got {type(data).__name__}")
    try:
        takes_gen = "generator" in inspect.signature(data).parameters
    except (TypeError, ValueError):
        takes_gen = False
    draw = (lambda n: checked(data(n, generator=generator), n)) if takes_gen else (lambda n: checked(data(n), n))
    return draw, draw


def optimize_grid(score_fn: Callable, sde, *, sample: Callable, traits: Callable, solver: str = "dpmpp_2m", nfe: int = 10, shape=None,
                  denoise: bool = False, eps: float | None = None, init: str | None = None, n_fit: int = 256,
                  n_eval: int = 1024, seed: int = 0, max_evals: int | None = None, rtol: float = 1e-7,
                  dtype: torch.dtype = torch.float64, device=None, options: dict | None = None,
                  progress: Callable | None = None, objective: str = "pathwise", data=None,
                  klub_t_min: float | None = None) -> GridFit:
    """Fit the time grid of `solver` at a budget of `nfe` score evaluations (see the module doc).

    shape: one sample's shape, e.g. (2,) (objective="klub" reads it off a data tensor); denoise:
    the solver ends with Tweedie's x̂_0 (one of the nfe); eps: end time (default: the solver's);
    init: named grid to start from (default: the best named grid on the fitting draws);
    max_evals: Nelder–Mead evaluations (default 150·(K−1)); options: the solver's.
    objective: "pathwise" (deterministic solvers; n_fit / n_eval starting points, rtol of the
    reference solve) or "klub" (any solver; needs data: a tensor (N, ...) of samples or a callable
    n -> samples, e.g. GaussianMixture.sample; n_fit / n_eval draws per step; klub_t_min: where the
    bound stops for a grid ending at σ = 0, default sde.default_eps; see solvers.klub).
    sample, traits: the package's solvers.sample and solvers.traits (handed in by
    solvers.optimize_grid, which is what users call; this module cannot import the package that
    re-exports it).
    Returns a GridFit; `solvers.sample(..., grid=fit.t_grid)` uses the grid.
    """
    if objective not in OBJECTIVES:
        raise SolverError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}, got {objective!r}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise SolverError(f"nfe must be an integer >= 1, got {nfe!r}")
    if objective == "klub":
        if data is None:
            raise SolverError("objective='klub' needs data=: samples x_0 (a tensor (N, ...) or a callable n -> "
                              "samples, e.g. GaussianMixture.ring().sample)")
        if shape is None and torch.is_tensor(data):
            shape = tuple(data.shape[1:])
    elif data is not None or klub_t_min is not None:
        raise SolverError("data= and klub_t_min= belong to objective='klub'; the pathwise objective needs neither")
    if shape is None:
        raise SolverError("give shape=(D, ...), one sample's shape, e.g. (2,) for the ring")
    if init is not None and init not in GRIDS:
        raise SolverError(f"unknown init grid {init!r}; choose one of: {', '.join(GRIDS)}")
    options = dict(options or {})
    declared = traits(solver, options)
    if declared.adaptive:
        raise SolverError(f"{solver} with an adaptive method chooses its own steps; pass options="
                          "{'method': 'rk4'} (or another fixed-step method) to fit its grid")
    if objective == "pathwise" and declared.stochastic:
        raise SolverError(f"solver {solver!r} draws noise with these options; the pathwise objective fits a "
                          f"deterministic solver (e.g. ddim, euler, heun, dpmpp_2m); use objective='klub'")
    t0 = time.perf_counter()
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    probe = torch.zeros((2, *shape), dtype=dtype, device=device)  # the grid and nfe do not depend on x_T
    if eps is None:  # the solver's own end time, as sample() chooses it
        eps = float(sample(score_fn, sde, x_T=probe[:1], solver=solver, steps=1, grid="uniform",
                           generator=torch.Generator(device=probe.device).manual_seed(0), **options).t_grid[-1])
    eps = float(eps)
    named = [k for k in GRIDS if not (eps == 0 and k in ("edm", "logsnr"))]
    K, used = steps_for_nfe(sample, score_fn, sde, solver, nfe, probe, init or named[0], eps, denoise, options)
    grids = {k: time_grid(sde, K, k, eps) for k in named}
    fit = GridFit(t_grid=grids[named[0]], solver=solver, steps=K, nfe=used, denoise=denoise, error=math.nan,
                  init_grid="", init_error=math.nan, seed=seed, options=options, objective=objective)

    if objective == "pathwise":
        fit_objective, held_out = _pathwise(sample, score_fn, sde, solver, shape, denoise, eps, n_fit, n_eval, g,
                                            rtol, dtype, device, options)
    else:
        fit_objective, held_out = _klub(score_fn, sde, data, K, shape, n_fit, n_eval, g, klub_t_min, dtype, device)
    start, fit.t_grid, fit_val, fit.evaluations = _fit_loop(fit_objective, sde, eps, grids, init, K, max_evals,
                                                            progress)
    named_vals = {k: held_out(ts) for k, ts in grids.items()}
    error, init_error, named_errors, fit_error = _FIELDS[objective]
    setattr(fit, error, held_out(fit.t_grid))
    setattr(fit, init_error, named_vals[start])
    setattr(fit, named_errors, named_vals)
    setattr(fit, fit_error, fit_val)
    fit.init_grid, fit.wall_s = start, time.perf_counter() - t0
    return fit


def _pathwise(sample, score_fn, sde, solver, shape, denoise, eps, n_fit, n_eval, g, rtol, dtype, device, options):
    """(fit objective, held-out objective) of the pathwise error: RMS distance to the reference."""
    x_fit = sde.prior_sample((n_fit, *shape), generator=g, dtype=dtype, device=device)
    x_eval = sde.prior_sample((n_eval, *shape), generator=g, dtype=dtype, device=device)  # fresh draws

    def run(x_T, ts):  # a deterministic solver: the generator is only there for the interface
        return sample(score_fn, sde, x_T=x_T, solver=solver, grid=ts, denoise=denoise,
                      generator=torch.Generator(device=x_T.device).manual_seed(0), **options).x

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

    return fit_error, lambda ts: error(run(x_eval, ts), ref_eval)


def _klub(score_fn, sde, data, K, shape, n_fit, n_eval, g, t_min, dtype, device):
    """(fit objective, held-out objective) of the KLUB: one estimator on fixed fitting draws, one
    on fresh draws, with the same importance-sampling scale c (the fitting draws')."""
    draw_fit, draw_eval = _data_draws(data, tuple(shape), g, dtype, device)
    fit = KLUB(score_fn, sde, draw_fit(K * n_fit).reshape(K, n_fit, *shape), generator=g, t_min=t_min)
    held = KLUB(score_fn, sde, draw_eval(K * n_eval).reshape(K, n_eval, *shape), generator=g, c=fit.c, t_min=t_min)

    def guarded(est):
        def value(ts):
            v = est(ts)
            return v if math.isfinite(v) else 1e10
        return value

    return guarded(fit), guarded(held)

"""Every sampler behind one call:

    res = solvers.sample(score_fn, sde, shape=(n, 2), solver="heun", steps=18, generator=g)
    res.x, res.nfe, res.t_grid

`score_fn(x, t)` takes x (B, ...) and t of shape (B,) and returns ∇log p_t(x), shaped like x.
Each solver is a short function `solver(prob, x, **options) -> x` over a shared `Problem`
(grid coefficients, counted score call, noise, callback).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from scoresde._ode import ADAPTIVE
from scoresde.convert import x0_from_score

from ._common import Problem, SampleResult, SolverError
from ._graph import GraphedScore, graphed
from .ancestral import ddim, ddpm
from .deis import deis
from .dpmpp import dpmpp_2m
from .dpmpp_3m import dpmpp_3m
from .dpmpp_sde import dpmpp_2m_sde
from .euler_maruyama import euler_maruyama, predictor_corrector
from .grids import DEFAULT_STEPS, GRIDS, check_resolution, explicit_grid, load_grid, resolve_grid, steps_and_eps, time_grid
from .heun import euler, euler_t, heun, heun_t
from .ipndm import ipndm
from .pf_ode import METHOD_ORDER, pf_ode
from .sde_torchsde import torchsde_sde
from .unipc import unipc
from . import tuned as _tuned
from . import fewstep


@dataclass(frozen=True)
class SolverTraits:
    """What a solver does with given options.

    stochastic: it draws noise, so its output is a random variable given x_T;
    adaptive: it picks its own steps (the grid only gives the ends);
    order: p with max |x_K − x(eps)| = O(h^p) on a step h, for a deterministic fixed-step solve;
    weak_order: p with |E φ(x_K) − E φ(x(eps))| = O(h^p), for a stochastic solve, where known.
    None means not declared (or not meaningful: no order for a stochastic or adaptive solve).
    """

    stochastic: bool
    adaptive: bool
    order: int | None
    weak_order: int | None


def _option_rule(value, options: dict):
    # A SolverSpec property is a constant or a function of the full options (defaults filled in).
    return value(options) if callable(value) else value


@dataclass(frozen=True)
class SolverSpec:
    """One solver: its function, a one-line description, its default grid and what it declares
    about itself (`traits`).  order, weak_order, stochastic and adaptive are constants or functions
    of the solver's options, defaults filled in."""

    fn: Callable
    description: str
    grid: str = "uniform"
    to_zero: bool = False  # default end time 0 (the update handles σ = 0) instead of sde.default_eps
    # {sde name: grid}: chosen per SDE by `python experiments/solver_benchmark.py --grid-study`
    grid_by_sde: dict | None = None
    order: int | Callable[[dict], int | None] | None = None
    weak_order: int | Callable[[dict], int | None] | None = None
    stochastic: bool | Callable[[dict], bool] = False
    adaptive: bool | Callable[[dict], bool] = False
    # the solver's own loop calls the score at the grid times (False: torchdiffeq or torchsde does,
    # at times of its own), which afs=True needs
    grid_loop: bool = True

    def options(self, given: dict | None = None) -> dict:
        """The solver's keyword options with their defaults, updated by `given`."""
        params = inspect.signature(self.fn).parameters.values()
        own = {p.name: p.default for p in params if p.name not in ("prob", "x")}
        # sample()'s afs=, listed with the solver's own so that `-o afs=true` and `scoresde solvers` see it
        return {**own, **({"afs": False} if self.grid_loop else {}), **(given or {})}

    def traits(self, options: dict | None = None) -> SolverTraits:
        """Whether the solve with these options is stochastic or adaptive, and its order."""
        opts = self.options(options)
        stochastic, adaptive = bool(_option_rule(self.stochastic, opts)), bool(_option_rule(self.adaptive, opts))
        return SolverTraits(stochastic=stochastic, adaptive=adaptive,
                            order=None if stochastic or adaptive else _option_rule(self.order, opts),
                            weak_order=_option_rule(self.weak_order, opts) if stochastic else None)

    def named_grid(self, sde) -> str:
        """The default among the named grids for this SDE family."""
        return (self.grid_by_sde or {}).get(sde.family, self.grid)


def default_grid(solver: str, sde, steps: int | None = None) -> str:
    """The solver's default grid for this SDE and step count: up to the largest step count of the
    few-step panel, the grid chosen there for the nearest one (solvers.fewstep: the lowest
    geometric-mean ratio of the error against each model's converged ODE to that model's best
    anchor, over the panel's choose part); beyond it (steps=None: the default 50 steps), or for an SDE
    outside the panel's families, its named grid for the SDE family (experiments/solver_benchmark.py
    --grid-study)."""
    grid = fewstep.grid_for(solver, sde, DEFAULT_STEPS if steps is None else steps)
    return named_default_grid(solver, sde) if grid is None else grid


def recommended(sde, nfe: int) -> dict | None:
    """The few-step panel's choice for at most `nfe` score evaluations on this SDE family:
    {solver, grid, steps, afs, budget} (solvers.fewstep.recommended), or None."""
    return fewstep.recommended(sde, nfe)


def named_default_grid(solver: str, sde) -> str:
    """The solver's default among the named grids (what 'tuned' falls back to)."""
    return SOLVERS[solver].named_grid(sde)


def _nonzero(option: str) -> Callable[[dict], bool]:
    return lambda opts: opts[option] != 0


def _churns(opts: dict) -> bool:  # EDM's churn adds S_noise·N(0, σ̂² − σ²) where S_churn > 0
    return opts["S_churn"] > 0 and opts["S_noise"] > 0


# Orders: measured on the closed-form Gaussian flow (tests/test_solvers.py, tests/test_weak_order.py).
SOLVERS = {
    "ddpm": SolverSpec(ddpm, "DDPM ancestral sampling (Ho et al. 2020, Alg. 2); variance=beta_tilde|beta",
                       to_zero=True, stochastic=True, weak_order=1),
    "ddim": SolverSpec(ddim, "DDIM (Song et al. 2021a); eta=0 deterministic, eta=1 is DDPM", to_zero=True,
                       order=1, weak_order=1, stochastic=_nonzero("eta")),
    "euler_maruyama": SolverSpec(euler_maruyama, "Euler–Maruyama on the reverse SDE (native loop)",
                                 stochastic=True, weak_order=1),
    "torchsde": SolverSpec(torchsde_sde, "the reverse SDE via torchsde.sdeint; method=euler|milstein|srk|"
                                         "euler_heun|heun|midpoint", stochastic=True, grid_loop=False),
    "pc": SolverSpec(predictor_corrector, "predictor–corrector: Langevin corrector + reverse-diffusion predictor "
                                          "(Song et al. 2021, Alg. 2/3); snr=0.16, predictor=reverse_diffusion|"
                                          "euler_maruyama", stochastic=True),
    "pf_ode": SolverSpec(pf_ode, "probability-flow ODE via torchdiffeq; method=dopri5 (adaptive, rtol/atol) "
                                 "or a fixed-step method on the grid",
                         order=lambda opts: METHOD_ORDER.get(opts["method"]),
                         adaptive=lambda opts: opts["method"] in ADAPTIVE, grid_loop=False),
    "euler": SolverSpec(euler, "EDM's Euler: steps in σ/m on x/m, dx̃/dσ̃ = (x̃ − D)/σ̃ (Karras et al. 2022); "
                               "churn S_churn, S_tmin, S_tmax, S_noise", grid="edm",
                        grid_by_sde={"vp": "quadratic", "subvp": "uniform", "ve": "edm"},
                        order=1, weak_order=1, stochastic=_churns),
    "heun": SolverSpec(heun, "EDM's Heun: steps in σ/m on x/m, dx̃/dσ̃ = (x̃ − D)/σ̃ (Karras et al. 2022, "
                             "Alg. 1; Alg. 2 with S_churn > 0)", grid="edm",
                       grid_by_sde={"vp": "quadratic", "subvp": "uniform", "ve": "edm"},
                       order=2, weak_order=2, stochastic=_churns),
    "euler_t": SolverSpec(euler_t, "Euler in t on the probability-flow ODE dx/dt = f·x − ½g²s (first order)",
                          order=1),
    "heun_t": SolverSpec(heun_t, "Heun in t on the probability-flow ODE dx/dt = f·x − ½g²s (second order)",
                         grid="quadratic", grid_by_sde={"ve": "edm"}, order=2),
    "dpmpp_2m": SolverSpec(dpmpp_2m, "DPM-Solver++(2M), multistep second order in log-SNR (Lu et al. 2022)",
                           grid="logsnr", order=2),
    # the anchors' D2 weighting (match_anchors) leaves an h³ local error: second order
    "dpmpp_3m": SolverSpec(dpmpp_3m, "DPM-Solver++(3M), multistep third order in log-SNR (Lu et al. 2022b)",
                           grid="logsnr", order=lambda opts: 2 if opts["match_anchors"] else 3),
    "dpmpp_2m_sde": SolverSpec(dpmpp_2m_sde, "SDE-DPM-Solver++(2M), stochastic multistep in log-SNR (Lu et al. "
                                             "2022b); eta=1, solver_type=midpoint|heun", grid="logsnr",
                               order=2, weak_order=2, stochastic=_nonzero("eta")),
    # the corrector raises UniP-p's order p by one
    "unipc": SolverSpec(unipc, "UniPC: UniP-p predictor + UniC corrector in log-SNR (Zhao et al. 2023); "
                               "order=1..3, variant=bh1|bh2", grid="logsnr",
                        order=lambda opts: opts["order"] + bool(opts["corrector"])),
    "deis": SolverSpec(deis, "ρAB-DEIS: variable-step Adams–Bashforth in σ/m on x/m (Zhang & Chen 2023); "
                             "order=1..3", grid="edm", order=lambda opts: opts["order"]),
    # equal-step weights on a grid that is not uniform in σ/m: second order from p = 2 on (ipndm.py);
    # named grids: the lowest geometric-mean error at 20 nfe over the few-step panel's choose models
    "ipndm": SolverSpec(ipndm, "iPNDM: Adams–Bashforth with equal-step weights in σ/m on x/m, lower-order "
                               "warm-up (Zhang & Chen 2023); order=1..4", grid="quadratic",
                        grid_by_sde={"subvp": "uniform", "ve": "logsnr"}, order=lambda opts: min(opts["order"], 2)),
}


#: every grid name `sample(grid=...)` and the CLI accept: the named grids and 'tuned'
GRID_NAMES = {"tuned": "fitted per solver and SDE family on the ring oracle (solvers.tuned); a default only where "
                       "the few-step panel chose it (solvers.fewstep)", **GRIDS}


def available() -> list[str]:
    """Names accepted by `sample(solver=...)`."""
    return list(SOLVERS)


def solver_options(solver: str) -> dict:
    """The keyword options a solver takes, with their defaults: {name: default}."""
    if solver not in SOLVERS:
        raise SolverError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
    return SOLVERS[solver].options()


def traits(solver: str, options: dict | None = None) -> SolverTraits:
    """What `solver` declares with these options: stochastic, adaptive, order, weak order
    (see SolverTraits); raises SolverError for an unknown solver or option."""
    check_options(solver, options or {})
    return SOLVERS[solver].traits(options)


def check_options(solver: str, options) -> None:
    """Raise SolverError naming any option the solver does not take, and those it does."""
    allowed = solver_options(solver)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise SolverError(f"unknown option(s) {', '.join(map(repr, unknown))} for solver {solver!r}; "
                          f"it accepts: {', '.join(allowed) or 'none'}")


def default_eps(solver: str, sde) -> float:
    return 0.0 if SOLVERS[solver].to_zero else sde.default_eps


def _tuned_times(solver: str, sde, steps, eps) -> torch.Tensor:
    if not _tuned.has_tuned(solver, sde):
        have = sorted({s for fam in _tuned.table().values() for s in fam})
        raise SolverError(f"no tuned grid for solver {solver!r} on {sde!r}; tuned grids ship for the VP (linear), "
                          f"sub-VP and VE SDEs and the solvers {', '.join(have) or 'none'}; use a named grid")
    return _tuned.tuned_grid(solver, sde, *steps_and_eps(sde, steps, eps, default_eps(solver, sde)))


def sample(score_fn: Callable, sde, shape=None, *, x_T: torch.Tensor | None = None, solver: str = "heun",
           steps: int | None = None, grid=None, eps: float | None = None,
           generator: torch.Generator | None = None, denoise: bool = False, callback: Callable | None = None,
           dtype: torch.dtype | None = None, device=None, check_finite: bool = True,
           batch_size: int | None = None, cuda_graph: bool = False, afs: bool = False, **options) -> SampleResult:
    """Draw samples by integrating from t = T (x_T ~ prior, or the given x_T) down to t = eps.

    grid: 'uniform', 'quadratic', 'edm', 'logsnr', 'tuned' (a shape fitted per solver and SDE
    family, see solvers.tuned), or an explicit decreasing sequence of times from T (or a .json
    file of them), which implies steps and eps; default: default_grid(solver, sde, steps), the
    few-step panel's choice up to 20 steps (solvers.fewstep), else the solver's named grid;
    steps: default 50 for a named grid; eps: end time (default 0 for ddpm/ddim, else
    sde.default_eps); denoise: finish with Tweedie's x̂_0 = (x + σ²s)/m at eps
    (one more evaluation); callback(dict(i, t, x, nfe)) after every step; dtype (e.g. float64)
    for the solve; options go to the solver (variance=, eta=, method=, rtol=, atol=, snr=, …).

    batch_size: evaluate the score on at most this many samples at a time.  x_T, the state and
    every noise draw stay whole-batch, so the samples equal those of one big batch for the same
    seed; network memory is bounded by batch_size, the state costs a few copies of (n, ...).
    afs: the analytical first step (Zhou et al. 2024, AMED's "AFS"): the score at t_0 = T is taken as
    that of N(0, σ(T)²I), s = −x/σ(T)² (ε̂ = x/σ(T), x̂_0 = 0), instead of a network call, so K steps
    cost one evaluation fewer.  Exact for data at the origin; otherwise the first step misses by
    (σ̃_0 − σ̃_1)·E[x_0]/σ̃_0 in x̃ = x/m (σ̃ = σ/m), which reaches the samples multiplied by
    about s/σ̃_1 (s the data's scale): worth it at ≤ 10 evaluations on data centred near 0 (images on [−1, 1], the panel's rings),
    not on data far off the origin (docs/solvers.md measures both).  Not for pf_ode and torchsde,
    whose libraries choose the times of the calls.
    cuda_graph: replay the score call from CUDA graphs (one per batch shape; see
    solvers._graph): no per-call launch overhead, same samples.  On a device other than CUDA it
    warns and calls the score eagerly.  Pass a `solvers.GraphedScore(score_fn)` as score_fn
    instead to keep the graphs across solves.
    """
    if solver not in SOLVERS:
        raise SolverError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
    spec = SOLVERS[solver]
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise SolverError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    check_options(solver, options)
    if not isinstance(afs, bool):
        raise SolverError(f"afs must be True or False, got {afs!r}")
    if afs and not spec.grid_loop:
        raise SolverError(f"afs=True needs a solver that steps on the grid itself; {solver!r} hands its steps to "
                          f"{'torchdiffeq' if solver == 'pf_ode' else 'torchsde'} (use e.g. ipndm, dpmpp_2m, unipc, "
                          f"euler, heun or ddpm)")
    if x_T is None:
        if shape is None:
            raise SolverError("give either shape=(B, ...) or x_T")
        x = sde.prior_sample(shape, generator=generator, dtype=dtype or torch.float32,
                             device=device if device is not None else (generator.device if generator else None))
    else:
        if not torch.is_tensor(x_T) or x_T.ndim < 2:
            raise SolverError(f"x_T must be a tensor of shape (B, ...), got "
                              f"{tuple(x_T.shape) if torch.is_tensor(x_T) else type(x_T).__name__}")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise SolverError(f"shape {tuple(shape)} does not match x_T's shape {tuple(x_T.shape)}")
        x = x_T.to(dtype=dtype or x_T.dtype, device=device if device is not None else x_T.device)
    grid = default_grid(solver, sde, steps) if grid is None else grid
    if isinstance(grid, str) and grid == "tuned":
        ts = _tuned_times(solver, sde, steps, eps)
    else:
        ts, grid = resolve_grid(sde, grid, steps, eps, default_eps(solver, sde))
    check_resolution(sde, ts, x.dtype)
    fn = graphed(score_fn, x.device) if cuda_graph else score_fn
    prob = Problem(fn, sde, ts, x, generator, callback, check_finite, batch_size, afs)
    with torch.no_grad():
        x = spec.fn(prob, x, **options)
        if denoise:
            if prob.sigma[-1] <= 0:
                raise SolverError("denoise=True needs eps > 0 (the samples already sit at σ = 0)")
            x = x0_from_score(x, prob.score(x, prob.t[-1]), prob.m[-1], prob.sigma[-1])
    prob.check_deferred()
    return SampleResult(x=x, nfe=prob.nfe, t_grid=ts, solver=solver, grid=grid, schedule=prob.schedule)


from . import optimize as _optimize  # noqa: E402
from .optimize import GridFit  # noqa: E402


def optimize_grid(score_fn: Callable, sde, **kwargs) -> GridFit:
    """Fit `solver`'s time grid to a budget of `nfe` score evaluations: the grid minimizing its RMS
    distance to a tight solution of the probability-flow ODE, or with objective="klub" (any solver,
    meant for the stochastic ones; data= samples x_0) the KL upper bound of Align Your Steps (see
    solvers.optimize.optimize_grid for the method and every keyword), scored on fresh draws.

        fit = solvers.optimize_grid(score_fn, sde, solver="dpmpp_2m", nfe=10, shape=(2,))
        fit = solvers.optimize_grid(score_fn, sde, solver="ddpm", nfe=10, objective="klub", data=oracle.sample,
                                    shape=(2,))
        solvers.sample(score_fn, sde, shape=(n, 2), solver="dpmpp_2m", grid=fit.t_grid)
    """
    return _optimize.optimize_grid(score_fn, sde, sample=sample, traits=traits, **kwargs)


__all__ = ["sample", "available", "solver_options", "check_options", "traits", "SampleResult", "SolverError",
           "SolverSpec", "SolverTraits", "SOLVERS",
           "GRIDS", "GRID_NAMES", "time_grid", "default_grid", "named_default_grid", "explicit_grid", "load_grid",
           "optimize_grid", "GridFit", "GraphedScore"]

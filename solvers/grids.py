"""Time grids T = t_0 > t_1 > … > t_K = eps shared by every sampler (float64).

uniform   t_i = T + (i/K)(eps − T)
quadratic t_i = (√T + (i/K)(√eps − √T))²                      denser near the data (DDIM)
edm       r_i = (r_T^{1/ρ} + (i/K)(r_eps^{1/ρ} − r_T^{1/ρ}))^ρ, r = σ/m, ρ = 7 (Karras et al.)
logsnr    λ_i uniform between λ(T) and λ(eps), λ = log(m/σ)     (DPM-Solver)

A grid is also data: an explicit decreasing sequence T = t_0 > … > t_K ≥ 0, or a JSON file
holding one (a list, or an object with a "t_grid" list, as `scoresde schedule` writes).
"""
from __future__ import annotations

import json
import math
import os

import torch

DEFAULT_STEPS = 50

GRIDS = {
    "uniform": "uniform in t",
    "quadratic": "uniform in √t: denser near the data (DDIM's quadratic spacing)",
    "edm": "Karras et al.'s ρ = 7 spacing of the noise level σ/m",
    "logsnr": "uniform in log-SNR λ = log(m/σ) (DPM-Solver's choice)",
}


RHO = 7.0


def edm_coord(sde, ts: torch.Tensor, rho: float = RHO) -> torch.Tensor:
    """c(t) = (σ/m)^{1/ρ} = exp(−λ/ρ), EDM's coordinate of the noise level; 0 where σ = 0."""
    return torch.exp(-sde.log_snr(ts) / rho)


def check_eps(sde, eps: float) -> None:
    if not 0 <= eps < sde.T:
        raise _error(f"eps must satisfy 0 <= eps < T = {sde.T}, got {eps!r}")


def steps_and_eps(sde, steps: int | None, eps: float | None, default_eps: float) -> tuple[int, float]:
    """The checked (steps, eps) of a grid built from a rule (a named or the tuned grid):
    steps default DEFAULT_STEPS, an integer >= 1; eps default `default_eps`, 0 <= eps < T."""
    steps = DEFAULT_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise _error(f"steps must be an integer >= 1, got {steps!r}")
    eps = default_eps if eps is None else float(eps)
    check_eps(sde, eps)
    return steps, eps


def time_grid(sde, steps: int, kind: str = "uniform", eps: float = 1e-3, rho: float = RHO,
              device=None) -> torch.Tensor:
    """K+1 = steps+1 decreasing times from sde.T to eps (float64)."""
    from ._common import SolverError

    if kind not in GRIDS:
        raise SolverError(f"unknown time grid {kind!r}; choose one of: {', '.join(GRIDS)}")
    T = sde.T
    check_eps(sde, eps)
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        ts = T + u * (eps - T)
    elif kind == "quadratic":
        ts = (T ** 0.5 + u * (eps ** 0.5 - T ** 0.5)) ** 2
    else:
        ends = torch.tensor([T, eps], dtype=torch.float64)
        lam = sde.log_snr(ends)
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


def check_resolution(sde, ts: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise SolverError unless the grid `ts` (float64, T … eps) stays strictly decreasing once
    cast to the solve's `dtype`: an eps within the dtype's resolution of T (or steps finer than
    it) would otherwise surface as a solver's own error, e.g. torchsde's 'ts must be strictly
    increasing'.  Runs once on the grid, before any score call."""
    if not dtype.is_floating_point or dtype == torch.float64:
        return
    cast = ts.detach().to("cpu", torch.float64).to(dtype)
    bad = (cast[1:] >= cast[:-1]).nonzero()
    if not bad.numel():
        return
    T, eps, steps = float(ts[0]), float(ts[-1]), ts.numel() - 1
    spacing = float(torch.finfo(dtype).eps) * max(abs(T), 1.0)
    if float(cast[-1]) >= float(cast[0]):
        what = f"rounds to T = {T:g} in {dtype}"
    else:
        i = int(bad[0, 0])
        what = (f"leaves t_{i} = {float(ts[i])!r} and t_{i + 1} = {float(ts[i + 1])!r} equal in {dtype} "
                f"(the grid's {steps} steps are finer than its resolution)")
    raise _error(f"eps = {eps!r} {what}; the grid's {steps} steps need eps <= T - about {steps * spacing:.3g} "
                 f"(one {dtype} spacing {spacing:.3g} near T per step); choose a smaller eps, fewer steps, "
                 f"or dtype=torch.float64")


def _error(msg):
    from ._common import SolverError

    return SolverError(msg)


def load_grid(path: str) -> list[float]:
    """The times stored in a JSON grid file: a list of numbers or {"t_grid": [...], ...}."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise _error(f"grid file {path!r} could not be read as JSON: {e}") from None
    times = data.get("t_grid") if isinstance(data, dict) else data
    if not isinstance(times, list):
        raise _error(f"grid file {path!r} must hold a list of times or an object with a 't_grid' list")
    return times


def explicit_grid(sde, times) -> torch.Tensor:
    """Check and return an explicit grid (float64): T ≥ t_0 > t_1 > … > t_K ≥ 0 with K ≥ 1.

    A grid may start below T: the prior draw is then taken as x at t_0, as diffusers' 'leading'
    timestep spacing does (its first timestep is N − N/K, not N − 1); a t_0 within 1e-9 of T is T."""
    try:
        ts = torch.as_tensor(times.tolist() if torch.is_tensor(times) else list(times), dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise _error(f"an explicit grid must be a sequence of numbers, got {type(times).__name__}: {e}") from None
    if ts.ndim != 1 or ts.numel() < 2:
        raise _error(f"an explicit grid needs at least 2 times (T … eps) in a flat sequence, got shape "
                     f"{tuple(ts.shape)}")
    if not torch.isfinite(ts).all():
        raise _error(f"an explicit grid must be finite, got {ts.tolist()}")
    T = sde.T
    near_T = math.isclose(float(ts[0]), T, rel_tol=1e-9, abs_tol=1e-12)
    if not near_T and float(ts[0]) > T:
        raise _error(f"an explicit grid must start at or below T = {T} (the prior), got t_0 = {float(ts[0])!r}")
    if float(ts[-1]) < 0:
        raise _error(f"an explicit grid must end at a time >= 0, got t_K = {float(ts[-1])!r}")
    bad = (ts[1:] >= ts[:-1]).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise _error(f"an explicit grid must be strictly decreasing; t_{i} = {float(ts[i])!r} is followed by "
                     f"t_{i + 1} = {float(ts[i + 1])!r}")
    if near_T:
        ts[0] = T
    return ts


def resolve_grid(sde, grid, steps: int | None, eps: float | None, default_eps: float):
    """(times, name) for `sample(grid=...)`: a named grid with `steps` and `eps`, or an explicit
    sequence / JSON file, which implies both (a `steps` or `eps` that disagrees is an error)."""
    if isinstance(grid, str) and grid in GRIDS:
        steps, eps = steps_and_eps(sde, steps, eps, default_eps)
        return time_grid(sde, steps, grid, eps), grid
    if isinstance(grid, (str, os.PathLike)):
        if not str(grid).endswith(".json") and not os.path.isfile(grid):
            raise _error(f"unknown time grid {grid!r}; choose one of: tuned, {', '.join(GRIDS)}, an explicit "
                         f"sequence of times, or a .json file of them")
        ts, name = explicit_grid(sde, load_grid(grid)), os.fspath(grid)
    else:
        ts, name = explicit_grid(sde, grid), "explicit"
    if steps is not None and steps != ts.numel() - 1:
        raise _error(f"steps={steps!r} disagrees with the explicit grid, which has {ts.numel() - 1} steps; "
                     f"leave steps out")
    if eps is not None and not math.isclose(float(eps), float(ts[-1]), rel_tol=1e-9, abs_tol=1e-15):
        raise _error(f"eps={eps!r} disagrees with the explicit grid, which ends at {float(ts[-1])!r}; "
                     f"leave eps out")
    return ts, name

"""Tuned time grids: a fitted grid shape per deterministic few-step solver and SDE family,
reached with grid="tuned" (a default where solvers.fewstep chose it).

Each grid was fitted by `solvers.optimize_grid` (pathwise error to a tight probability-flow
ODE solution, scored on fresh draws) on the 8-mode ring oracle, per (solver, SDE, K), by
`python experiments/tuned_grids.py --fit`, which writes `tuned_grids.json` next to this file
with the evidence (held-out error of the fitted grid and of every named grid).

A grid is stored as its shape in EDM's coordinate c(t) = (σ/m)^{1/ρ}, ρ = 7, normalized to the
ends:  u_i = (c(T) − c(t_i)) / (c(T) − c(eps)),  u_0 = 0 … u_K = 1.  For K steps and an end time
eps the grid is  c_i = c(T) − U(i/K)·(c(T) − c(eps)),  t_i = c⁻¹(c_i),  with U the piecewise-linear
interpolant of the stored shape of the nearest fitted step count (fewer steps than the smallest
fitted: that one; more than the largest: the largest, as Align Your Steps interpolates its
schedules to other step counts).  So a tuned grid exists for every K ≥ 1, every eps and every
parameter set of the SDE family, and equals the fitted grid at the fitted K and eps.
"""
from __future__ import annotations

import functools
import json
import math
import os

import numpy as np
import torch

from .grids import RHO, edm_coord

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned_grids.json")
# Whether a tuned grid is a default is decided by the few-step panel (solvers.fewstep): fitted on
# the ring oracle, these shapes did not carry over to trained networks as a rule, so `grid="tuned"`
# is the default only where the panel's held-out models confirm it.


def sde_key(sde) -> str | None:
    """The family a tuned table is keyed by: 'vp' (linear β; also DDPM's own discrete table,
    linear β from 1e-4 to 0.02 over N = 1000 steps, which is that SDE's β(t) = 0.1 … 20 on the
    lattice), 'subvp', 've'; None for others (e.g. the cosine VP schedule, whose log-SNR path
    differs), which keep the named default."""
    cfg = sde.config()
    if cfg["name"] == "vpdiscrete":
        ends = (1000 * cfg.get("beta_start", 0.0), 1000 * cfg.get("beta_end", 0.0))
        ddpm = cfg.get("beta_schedule") == "linear" and cfg["N"] == 1000 \
            and math.isclose(ends[0], 0.1, rel_tol=0.05) and math.isclose(ends[1], 20.0, rel_tol=0.05)
        return "vp" if ddpm else None
    if cfg["name"] == "vp" and cfg.get("schedule", "linear") != "linear":
        return None
    return cfg["name"] if cfg["name"] in ("vp", "subvp", "ve") else None


def shape_of(sde, ts: torch.Tensor) -> list[float]:
    """u_i = (c(T) − c(t_i)) / (c(T) − c(t_K)) of a grid: what the table stores."""
    c = edm_coord(sde, ts.to(torch.float64))
    return ((c[0] - c) / (c[0] - c[-1])).tolist()


@functools.lru_cache(maxsize=1)
def table() -> dict:
    """{sde key: {solver: {K (int): shape}}} from tuned_grids.json ({} if the file is absent)."""
    if not os.path.exists(PATH):
        return {}
    with open(PATH) as f:
        raw = json.load(f)
    out: dict = {}
    for e in raw["grids"]:
        out.setdefault(e["sde"], {}).setdefault(e["solver"], {})[int(e["steps"])] = e["shape"]
    return out


def has_tuned(solver: str, sde) -> bool:
    key = sde_key(sde)
    return key is not None and solver in table().get(key, {})


def largest_fitted() -> dict:
    """{solver: largest fitted K over the SDE families} (K counts steps, not nfe)."""
    out: dict = {}
    for fam in table().values():
        for solver, shapes in fam.items():
            out[solver] = max(out.get(solver, 0), max(shapes))
    return out


def tuned_grid(solver: str, sde, steps: int, eps: float) -> torch.Tensor:
    """K + 1 = steps + 1 decreasing times from sde.T to eps (float64) on the tuned shape
    (module doc).  Raises KeyError when no tuned shape exists for (solver, SDE family)."""
    shapes = table()[sde_key(sde)][solver]
    K_fit = min(shapes, key=lambda k: (abs(math.log(k / steps)), -k))
    u_fit = np.asarray(shapes[K_fit], dtype=np.float64)
    u = np.interp(np.linspace(0, 1, steps + 1), np.linspace(0, 1, u_fit.size), u_fit)
    ends = edm_coord(sde, torch.tensor([sde.T, eps], dtype=torch.float64))
    c = ends[0] - torch.as_tensor(u) * (ends[0] - ends[1])
    ts = sde.t_from_log_snr(-RHO * torch.log(c[1:-1]))
    return torch.cat([torch.tensor([sde.T], dtype=torch.float64), ts, torch.tensor([eps], dtype=torch.float64)])

"""Few-step defaults: the grid each deterministic solver uses at a small step count, and the solver
recommended at each budget, per SDE family, chosen on a panel of models and stored in
fewstep_defaults.json next to this file.

`python experiments/fewstep_panel.py` measures the pathwise error (RMS ‖x − x_ref‖/√D against the
model's own converged probability-flow ODE) of every solver × grid (named and tuned) at 5, 10 and
20 score evaluations on a panel split in two: the grid of each (solver, budget) and the solver of
each budget minimize the geometric mean, over the *choose* models (trained networks, a diffusers
UNet among them, and oracles), of the error's ratio to that model's best anchor (diffusers)
configuration; named and tuned grids compete alike, and the *held-out* models only report (the
file's `rule` and `tuned_veto` say which rule made it).  The file keeps, per family,
    grids: {solver: {K: grid}}       K the solver's steps at that budget (heun: about nfe/2)
    best:  {budget: {solver, grid, steps[, afs]}}   afs: true where the analytical first step won
and the panel, split and evidence it came from.  Families are solvers.tuned.sde_key's ('vp':
linear β, and DDPM's own linear table; 'subvp'; 've'); any other SDE, and step counts above the
largest chosen K, keep the solver's named default grid.
"""
from __future__ import annotations

import functools
import json
import math
import os

from .tuned import sde_key

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fewstep_defaults.json")


@functools.lru_cache(maxsize=1)
def table() -> dict:
    """The stored choice: {"grids": {family: {solver: {K: grid}}}, "best": {family: {budget: {...}}}}
    ({} parts when the file is absent)."""
    if not os.path.exists(PATH):
        return {"grids": {}, "best": {}}
    with open(PATH) as f:
        raw = json.load(f)
    grids = {fam: {s: {int(k): g for k, g in by_k.items()} for s, by_k in fam_grids.items()}
             for fam, fam_grids in raw["grids"].items()}
    best = {fam: {int(b): v for b, v in by_b.items()} for fam, by_b in raw["best"].items()}
    return {"grids": grids, "best": best}


def grid_for(solver: str, sde, steps: int) -> str | None:
    """The chosen grid for `solver` on this SDE at `steps` steps: that of the chosen K nearest to
    `steps` in log (ties: the larger K); None above the largest chosen K, for an SDE outside the
    families, or a solver the panel did not cover (the caller then uses the named default)."""
    by_k = table()["grids"].get(sde_key(sde) or "", {}).get(solver)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        return None  # not a step count: sample()'s own check names the error
    if not by_k or steps > max(by_k):
        return None
    k = min(by_k, key=lambda k: (abs(math.log(k / steps)), -k))
    return by_k[k]


def recommended(sde, nfe: int) -> dict | None:
    """{solver, grid, steps, afs, budget} chosen for the largest panel budget ≤ nfe on this SDE
    family, or None (no family entry, or nfe below the smallest budget).  afs=True: sample() with
    the analytical first step, so `steps` is one more than the budget's evaluations.  Run it as
    solvers.sample(score_fn, sde, shape, solver=r["solver"], grid=r["grid"], steps=r["steps"], afs=r["afs"])."""
    best = table()["best"].get(sde_key(sde) or "", {})
    fits = [b for b in best if b <= nfe]
    return dict({"afs": False, **best[max(fits)]}, budget=max(fits)) if fits else None


def summary(family: str) -> str:
    """'≤ 5 nfe: unipc (logsnr grid, 5 steps); …' for one family, '' when none is stored."""
    best = table()["best"].get(family, {})
    return "; ".join(f"≤ {b} nfe: {v['solver']} ({v['grid']} grid, {v['steps']} steps"
                     f"{', afs=True: analytical first step' if v.get('afs') else ''})" for b, v in sorted(best.items()))

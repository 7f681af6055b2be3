"""Run a grid of (solver, steps) on one model with the same starting noise and score the
samples: the engine behind `scoresde compare` and experiments/solver_benchmark.py."""
from __future__ import annotations

import time
from typing import Iterable

import torch

from .metrics import quality, sw2_with_floor
from .models import ResolvedModel

ADAPTIVE_SOLVERS = ("pf_ode",)  # ignore `steps` (one run, nfe reported)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def score_samples(x: torch.Tensor, model: ResolvedModel, seed: int = 0) -> dict:
    """Quality of samples against the model's ground truth (oracle metrics, or sliced W2 to data)."""
    if model.oracle is not None:
        return quality(x, model.oracle, seed=seed)
    if model.data is not None and model.data.shape[0] >= 2 * x.shape[0]:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(model.data.shape[0], generator=g)
        n = x.shape[0]
        return sw2_with_floor(x, model.data[perm[:n]], model.data[perm[n:2 * n]], seed)
    return {}


def run_compare(model: ResolvedModel, solver_names: Iterable[str], steps_list: Iterable[int], n: int = 4000,
                seed: int = 0, grid: str | None = None, device="cpu", dtype=torch.float32,
                progress: bool = True, options: dict | None = None):
    """Returns (rows, samples): one dict per run and {(solver, steps): x on CPU}.

    Every run starts from the same x_T (drawn once from the prior with `seed`) and uses a
    generator seeded with `seed` for its noise, so differences are the solvers' own."""
    import solvers
    from tqdm.auto import tqdm

    solver_names, steps_list = list(solver_names), sorted(set(int(s) for s in steps_list))
    options = options or {}
    g = torch.Generator(device=device).manual_seed(seed)
    x_T = model.sde.prior_sample((n, *model.shape), generator=g, dtype=dtype, device=device)
    plan = [(s, None if s in ADAPTIVE_SOLVERS else k) for s in solver_names
            for k in ([None] if s in ADAPTIVE_SOLVERS else steps_list)]
    for s in solver_names:  # warm-up: first-call costs are not the solver's
        solvers.sample(model.score_fn, model.sde, x_T=x_T[:8], solver=s, steps=2, grid=grid,
                       generator=torch.Generator(device=device).manual_seed(0), **options.get(s, {}))
    rows, samples = [], {}
    bar = tqdm(plan, desc="compare", disable=not progress, leave=False)
    for name, steps in bar:
        bar.set_postfix_str(f"{name} {steps or 'adaptive'}")
        _sync(device)
        t0 = time.perf_counter()
        res = solvers.sample(model.score_fn, model.sde, x_T=x_T, solver=name, steps=steps or 1, grid=grid,
                             generator=torch.Generator(device=device).manual_seed(seed), **options.get(name, {}))
        _sync(device)
        wall = time.perf_counter() - t0
        x = res.x.detach().float().cpu()
        samples[(name, steps)] = x
        row = {"solver": name, "grid": "adaptive" if steps is None else res.grid,
               "steps": steps if steps is not None else "", "nfe": res.nfe, "wall_s": wall,
               "schedule": res.schedule}
        row.update(score_samples(x, model, seed=seed))
        rows.append(row)
    return rows, samples


def ranking_key(row: dict) -> float:
    """Lower is better: the within-mode W2 (spread and shape, in mode stds) plus the off-mode
    fraction when an oracle is known, else sliced W2 to data.  Plain sliced W2 at a few thousand
    samples is dominated by the sampling noise of the mode weights and cannot separate good
    solvers; the per-mode std ratio alone misses shape errors."""
    if "mode_w2" in row:
        return row["mode_w2"] + row["off_mode"]
    return row.get("sw2", float("inf"))


def best_at_nfe(rows: list[dict], budget: int) -> dict | None:
    """The best row (by ranking_key) among runs using at most `budget` score evaluations."""
    cands = [r for r in rows if r["nfe"] <= budget]
    return min(cands, key=ranking_key) if cands else None

"""Run a grid of (solver, steps) on one model with the same starting noise and score the
samples: the engine behind `scoresde compare` and experiments/solver_benchmark.py."""
from __future__ import annotations

import time
from typing import Iterable

import torch

from .metrics import ImageReference, quality, sw2_with_floor
from .models import ResolvedModel

ADAPTIVE_SOLVERS = ("pf_ode",)  # ignore `steps` (one run, nfe reported)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def image_reference(model: ResolvedModel, n: int, seed: int = 0, feature_net=None) -> ImageReference | None:
    """For a model of images (C, H, W) with reference data: two disjoint random samples of n
    reference images, scored against once (see metrics.ImageReference); else None."""
    if model.oracle is not None or model.data is None or len(model.shape) != 3:
        return None
    have = model.data.shape[0]
    if have < 2 * n:
        what = (model.info or {}).get("reference") or "the reference data"
        raise ValueError(f"scoring {n} images needs 2 × {n} reference images, {what} has {have}; "
                         f"use --n {have // 2} or fewer")
    perm = torch.randperm(have, generator=torch.Generator().manual_seed(seed))
    return ImageReference(model.data[perm[:n]], model.data[perm[n:2 * n]], feature_net, seed=seed)


def score_samples(x: torch.Tensor, model: ResolvedModel, seed: int = 0, reference: ImageReference | None = None
                  ) -> dict:
    """Quality of samples against the model's ground truth (oracle metrics, image metrics
    against `reference`, or sliced W2 to data)."""
    if reference is not None:
        return reference.score(x)
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
                progress: bool = True, options: dict | None = None, feature_net=None,
                batch_size: int | None = None, cuda_graph: bool = False):
    """Returns (rows, samples): one dict per run and {(solver, steps): x on CPU}.

    Every run starts from the same x_T (drawn once from the prior with `seed`) and uses a
    generator seeded with `seed` for its noise, so differences are the solvers' own.  Image
    models are scored in pixel space against their reference data and, with feature_net (a
    module images → features), by the Fréchet distance of its features.
    batch_size bounds the network's batch (same samples, see solvers.sample); cuda_graph
    replays the network from CUDA graphs kept across the runs (captured during the warm-up)."""
    import solvers
    from tqdm.auto import tqdm

    solver_names, steps_list = list(solver_names), sorted(set(int(s) for s in steps_list))
    options = options or {}
    reference = image_reference(model, n, seed, feature_net)
    if feature_net is not None and reference is None:
        raise ValueError("a feature network scores images; this model has no image reference data")
    explicit = grid is not None and grid not in solvers.GRIDS  # a grid file or sequence brings its steps
    if explicit:
        steps_list = [None]
    g = torch.Generator(device=device).manual_seed(seed)
    x_T = model.sde.prior_sample((n, *model.shape), generator=g, dtype=dtype, device=device)
    plan = [(s, None if s in ADAPTIVE_SOLVERS else k) for s in solver_names
            for k in ([None] if s in ADAPTIVE_SOLVERS else steps_list)]
    score_fn = solvers.graphed(model.score_fn, device) if cuda_graph else model.score_fn
    for s in solver_names:  # warm-up: first-call costs are not the solver's
        solvers.sample(score_fn, model.sde, x_T=x_T[:8], solver=s, steps=None if explicit else 2, grid=grid,
                       generator=torch.Generator(device=device).manual_seed(0), **options.get(s, {}))
    if cuda_graph:  # one evaluation at the runs' batch shapes captures their graphs
        solvers.sample(score_fn, model.sde, x_T=x_T, solver="euler", steps=1, batch_size=batch_size)
    rows, samples = [], {}
    # one bar over every solver step of every run, so it moves within a long run too (an adaptive
    # solve or an explicit grid counts as one unit: its step count is known only when it is done)
    bar = tqdm(total=sum(k or 1 for _, k in plan), desc="compare", unit="step", disable=not progress, leave=False)
    for name, steps in plan:
        bar.set_postfix_str(f"{name} {steps or ('grid' if explicit else 'adaptive')}")
        done = bar.n + (steps or 1)
        tick = (lambda info: bar.update(1) if bar.n < done else None) if progress else None
        _sync(device)
        t0 = time.perf_counter()
        res = solvers.sample(score_fn, model.sde, x_T=x_T, solver=name,
                             steps=None if explicit else steps or 1, grid=grid,
                             generator=torch.Generator(device=device).manual_seed(seed), callback=tick,
                             batch_size=batch_size,
                             **options.get(name, {}))
        _sync(device)
        wall = time.perf_counter() - t0
        bar.update(done - bar.n)
        x = res.x.detach().float().cpu()
        adaptive = name in ADAPTIVE_SOLVERS
        steps = None if adaptive else res.t_grid.numel() - 1
        samples[(name, steps)] = x
        row = {"solver": name, "grid": "adaptive" if adaptive else res.grid, "schedule": res.schedule,
               "steps": "" if adaptive else steps, "nfe": res.nfe, "wall_s": wall}
        row.update(score_samples(x, model, seed=seed, reference=reference))
        rows.append(row)
    bar.close()
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

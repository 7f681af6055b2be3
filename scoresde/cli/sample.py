"""`scoresde sample`: draw samples with one solver."""
from __future__ import annotations

import json
import time

import click

from scoresde.cli._common import (SEED, batch_options, check_model_path, check_solver, chosen_threads, class_option,
    CLIError, conditioned, FiniteRange, grid_steps, GridParam, model_options, option_flag, output_overwrite, resolve,
    solver_option_values, threads_option, to_device)


@click.command("sample")
@model_options
@click.option("--solver", default="heun", metavar="NAME", help="see `scoresde solvers`")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="solver steps [default: 50; a grid file implies its own]")
@click.option("--grid", type=GridParam(), default=None,
              help="time grid, or a .json file of times [default: the solver's own]")
@click.option("--n", "--num-samples", "n", type=click.IntRange(min=1), default=1000,
              help="number of samples (--num-samples under torchrun, whose own options --n abbreviates)")
@click.option("--seed", type=SEED, default=0, help="random seed")
@class_option
@click.option("--guidance", type=FiniteRange(), default=None, metavar="W",
              help="classifier-free guidance weight w: (1 + w)·s(x, c) − w·s(x, ∅); 0 is the plain conditional "
                   "model (diffusers' guidance_scale s is 1 + w) [default: 0 with --class]")
@click.option("--denoise", is_flag=True, help="finish with Tweedie's x̂_0 at eps (one more evaluation)")
@click.option("--out", type=click.Path(dir_okay=False), default="samples.npz", help="output .npz file")
@click.option("--png", type=click.Path(dir_okay=False), default=None, help="also save a picture")
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="instead of --out: one PNG per seed (--seed … --seed + n − 1) in this folder, for FID tools; "
                   "under torchrun the seeds are shared over the ranks, and a rerun skips the PNGs already there")
@click.option("--device", default="cpu", metavar="auto|cpu|cuda", help="where to run")
@threads_option
@batch_options
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--overwrite", is_flag=True, help="replace existing --out / --png files")
@option_flag
def command(model, sde_name, solver, steps, grid, n, seed, class_, guidance, denoise, out, png, images, device, threads,
            batch_size, cuda_graph, quiet, overwrite, option_pairs):
    """Draw samples with one solver and save them as .npz (x, nfe, t_grid, settings).

    \b
    Example:
      scoresde sample --model oracle:gmm8 --solver dpmpp_2m --steps 20 --n 5000 --out ring.npz --png ring.png
      scoresde sample --solver ddim -o eta=0.5 --steps 50 --out ddim.npz
      scoresde sample --model oracle:gmm8c4 --class arc1 --guidance 1 --solver heun --steps 20
      torchrun --nproc_per_node 2 -m scoresde.cli sample --model diffusers:ddpm-cifar10 --solver dpmpp_2m \
          --steps 20 --num-samples 50000 --images fid/
    """
    # inputs first, before torch is imported and before the output checks (see compare)
    check_solver(solver)
    if not out.endswith(".npz"):
        raise CLIError(f"--out {out!r}: the output must be a .npz file")
    implied = grid_steps(grid)
    if implied is not None and steps not in (None, implied):
        raise CLIError(f"--steps {steps} disagrees with --grid {grid}, which has {implied} steps; leave --steps out")
    steps = steps or implied or 50
    check_model_path(model)
    import numpy as np
    import torch

    import solvers
    from tqdm.auto import tqdm

    from scoresde._io import atomic_path

    options = solver_option_values(option_pairs, [solver])[solver]
    if images is not None:
        return _images(model, sde_name, solver, None if implied else steps, grid, n, seed, denoise, images, device,
                       threads, batch_size, quiet, options, class_, guidance)
    output_overwrite(out, overwrite, "--out")
    if png:
        output_overwrite(png, overwrite, "--png")
    dev = to_device(device)
    resolved = conditioned(resolve(model, sde_name, dev), class_, guidance)
    g = torch.Generator(device=dev).manual_seed(seed)
    x_probe = resolved.sde.prior_sample((n, *resolved.shape), generator=torch.Generator().manual_seed(seed)).to(dev)
    with chosen_threads(threads, resolved.score_fn, x_probe, dev, batch_size=batch_size, quiet=quiet):
        bar = tqdm(total=steps, desc=solver, disable=quiet, leave=False)
        t0 = time.perf_counter()
        res = solvers.sample(resolved.score_fn, resolved.sde, shape=(n, *resolved.shape), solver=solver,
                             steps=None if implied else steps, grid=grid, generator=g, device=dev, denoise=denoise,
                             batch_size=batch_size, cuda_graph=cuda_graph, callback=lambda info: bar.update(1),
                             **options)
        bar.close()
    wall = time.perf_counter() - t0
    x = res.x.detach().float().cpu()
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, x=x.numpy(), nfe=res.nfe, t_grid=res.t_grid.cpu().numpy(),
                 settings=json.dumps(dict(model=model, sde=resolved.sde.config(), solver=solver, steps=steps,
                                          grid=res.grid, n=n, seed=seed, denoise=denoise, options=options,
                                          **_class_settings(resolved, guidance))))
    msg = f"{n} samples, {res.nfe} nfe, {wall:.2f} s -> {out}"
    if resolved.label is not None:
        msg = f"class {resolved.class_names[resolved.label]!r} at guidance w = {guidance or 0:g}: " + msg
    from scoresde.evaluation.compare import MIN_METRIC_SAMPLES, score_samples

    q = score_samples(x, resolved, seed=seed) if n >= MIN_METRIC_SAMPLES and len(resolved.shape) != 3 else {}
    if q:
        msg += "  (" + ", ".join(f"{k} {v:.4g}" for k, v in q.items()) + ")"
    elif n < MIN_METRIC_SAMPLES and (resolved.oracle is not None or resolved.data is not None):
        msg += f"  (no quality metrics: they need at least {MIN_METRIC_SAMPLES} samples, got --n {n})"
    if resolved.oracle is not None and n >= MIN_METRIC_SAMPLES:
        from scoresde.evaluation.metrics import spread_warning

        warning = spread_warning(x, resolved.oracle, resolved.sde, 0.0 if denoise else float(res.t_grid[-1]),
                                 f"{solver} {res.t_grid.numel() - 1} steps")
        if warning:
            click.echo(f"WARNING: {warning}", err=True)
    if png:
        from scoresde.evaluation.plots import save_samples_png

        save_samples_png(x, png, title=f"{solver}, {steps} steps, {res.nfe} nfe")
        msg += f", {png}"
    click.echo(msg)


def _class_settings(resolved, guidance) -> dict:
    """What a guided run records: its class (index and name) and w."""
    if resolved.label is None:
        return {}
    return {"class": resolved.label, "class_name": resolved.class_names[resolved.label], "guidance": guidance or 0.0}


def _images(model, sde_name, solver, steps, grid, n, seed, denoise, folder, device, threads, batch_size, quiet, options,
            class_=None, guidance=None):
    """`sample --images`: this rank's share of the seeds as PNGs (scoresde.evaluation.images), of one
    class with --class/--guidance."""
    import os

    import torch
    from tqdm.auto import tqdm

    from scoresde.evaluation.images import write_image_folder

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if device.startswith("cuda") and world > 1 and ":" not in device:
        device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
    dev = to_device(device)
    resolved = conditioned(resolve(model, sde_name, dev), class_, guidance)
    if len(resolved.shape) != 3:
        raise CLIError(f"--images needs an image model; {model} draws samples of shape {resolved.shape}")
    batch = batch_size or 64
    seeds = range(seed, seed + n)
    x_probe = resolved.sde.prior_sample((min(batch, n), *resolved.shape), generator=torch.Generator().manual_seed(0))
    with chosen_threads(threads, resolved.score_fn, x_probe.to(dev), dev, quiet=quiet or rank != 0):
        bar = tqdm(total=len(seeds[rank::world]), desc=f"{solver} images", unit="img", disable=quiet or rank != 0,
                   leave=False)
        t0 = time.perf_counter()
        run = write_image_folder(resolved, folder, seeds, solver, batch=batch, rank=rank, world=world, device=dev,
                                 steps=steps, grid=grid, denoise=denoise, callback=bar.update, **options)
        bar.close()
    wall = time.perf_counter() - t0
    who = f"rank {rank} of {world}: " if world > 1 else ""
    click.echo(f"{who}{run.written} PNG(s) written to {folder} ({run.skipped} already there), seeds "
               f"{seed}-{seed + n - 1}{'' if world == 1 else f' (every {world}th from {seed + rank})'}, "
               f"{run.nfe} nfe, {wall:.2f} s")

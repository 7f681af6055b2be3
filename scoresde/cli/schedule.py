"""`scoresde schedule`: fit a solver's time grid to an nfe budget."""
from __future__ import annotations

import click

from scoresde.cli._common import (CLIError, check_model_path, check_solver, chosen_threads, model_options, resolve,
    threads_option, to_device, versions)


@click.command("schedule")
@model_options
@click.option("--solver", default="dpmpp_2m", metavar="NAME",
              help="a deterministic solver, or any with --objective klub (see `scoresde solvers`)")
@click.option("--nfe", type=click.IntRange(min=1), default=10, help="score evaluations the grid is fitted for")
@click.option("--denoise", is_flag=True, help="the solver ends with Tweedie's x̂_0 (one of the nfe)")
@click.option("--out", type=click.Path(dir_okay=False), default="grid.json", help="output .json file")
@click.option("--n-fit", type=click.IntRange(min=2), default=256, help="fitting batch (starting points)")
@click.option("--n-eval", type=click.IntRange(min=2), default=1024, help="fresh batch the result is scored on")
@click.option("--max-evals", type=click.IntRange(min=1), default=None,
              help="optimizer evaluations [default: 150 per free time]")
@click.option("--seed", type=int, default=0, help="seed for the fitting and evaluation batches")
@click.option("--device", default="cpu", metavar="auto|cpu|cuda", help="where to run")
@threads_option
@click.option("--objective", type=click.Choice(["pathwise", "klub"]), default="pathwise",
              help="pathwise: RMS error to the ODE (deterministic solvers); klub: the KL upper bound of "
                   "Align Your Steps (any solver; needs the model's data or oracle)")
def command(model, sde_name, solver, nfe, denoise, out, n_fit, n_eval, max_evals, seed, device, threads, objective):
    """Fit a solver's time grid to a budget of NFE score evaluations and write it as JSON.

    Minimizes the solver's RMS distance to a tight dopri5 solution of the probability-flow ODE
    from the same starting points; reports that error on fresh starting points for the fitted
    grid and every named grid.  With --objective klub it minimizes the KL upper bound between the
    reverse SDE and its discretization on the grid instead (for stochastic solvers; --n-fit and
    --n-eval count data draws per step).  Use the file with `--grid FILE.json` on sample or compare.

    \b
    Example:
      scoresde schedule --model oracle:gmm8 --sde ve --solver dpmpp_2m --nfe 10 --out ve10.json
      scoresde compare --sde ve --solvers dpmpp_2m --grid ve10.json
      scoresde schedule --model oracle:gmm8 --solver ddpm --nfe 10 --objective klub --out ddpm10.json
    """
    check_solver(solver)  # inputs before torch is imported (see compare)
    if not out.endswith(".json"):
        raise CLIError(f"--out {out!r}: the output must be a .json file")
    check_model_path(model)
    import torch

    import solvers

    from scoresde._io import write_json

    dev = to_device(device)
    resolved = resolve(model, sde_name, dev)
    dtype = resolved.dtype
    data = None
    if objective == "klub":
        data = resolved.oracle.sample if resolved.oracle is not None else resolved.data
        if data is None:
            raise CLIError(f"--objective klub needs data samples, and model {model!r} has neither an oracle nor "
                           f"reference data")
    x_probe = resolved.sde.prior_sample((n_fit, *resolved.shape), generator=torch.Generator().manual_seed(seed),
                                        dtype=dtype).to(dev)
    with chosen_threads(threads, resolved.score_fn, x_probe, dev):
        fit = solvers.optimize_grid(resolved.score_fn, resolved.sde, solver=solver, nfe=nfe, shape=resolved.shape,
                                    denoise=denoise, n_fit=n_fit, n_eval=n_eval, seed=seed, max_evals=max_evals,
                                    dtype=dtype, device=dev, objective=objective, data=data)
    write_json(out, dict(fit.to_json(), model=model, sde=resolved.sde.config(), versions=versions()))
    if objective == "klub":
        named = ", ".join(f"{k} {v:.4g}" for k, v in fit.named_klubs.items())
        what = f"KL upper bound on {n_eval} fresh draws per step: fitted {fit.klub:.4g}"
    else:
        named = ", ".join(f"{k} {v:.4g}" for k, v in fit.named_errors.items())
        what = f"RMS error to the ODE on {n_eval} fresh points: fitted {fit.error:.4g}"
    click.echo(f"{solver}: {fit.steps} steps, {fit.nfe} nfe{' (with denoise)' if denoise else ''}; {what} "
               f"(named grids: {named}); {fit.evaluations} evaluations, {fit.wall_s:.1f} s -> {out}")



"""`scoresde compare`: every (solver, steps) pair from the same noise, scored."""
from __future__ import annotations

import os
import time

import click

from scoresde.cli._common import DEFAULT_SOLVERS, SEED, batch_options, CLIError, duration, format_table, grid_steps, GridParam, model_options, option_flag, parse_list, resolve, solver_option_values, to_device, versions


# what the compare table's columns mean: printed under the table and in `compare --help`
METRICS = {
    "nfe": "score evaluations (network calls) the run used",
    "wall_s": "seconds the run took",
    "std_ratio": "per-mode std of the samples / the true std, over on-mode samples (ideal 1)",
    "mode_w2": "within-mode W2: sliced W2 between each sample's whitened offset from its mode and N(0, I), "
               "in mode stds; sees spread and shape (ideal 0; exact samples score a little above 0); "
               "with off_mode it ranks the solvers",
    "off_mode": "fraction of samples more than 5 mode stds from every mode (ideal 0)",
    "mode_tv": "total variation between the samples' mode weights and the true ones (ideal 0)",
    "sw2": "sliced W2 to a fresh data sample of size n, in data units; even exact samples score about "
           "sw2_floor, so it ranks solvers only when there is no oracle",
    "precision": "images: share of samples inside the k-NN (k = 3) manifold of the data (ideal: its floor)",
    "recall": "images: share of data inside the k-NN manifold of the samples (ideal: its floor)",
    "fd": "images, with --features: Fréchet distance of the feature network's outputs to the data's",
}
NETWORK_STEPS, ORACLE_STEPS = "10,20,50", "5,10,20,50,100,1000"
NETWORK_N, ORACLE_N = 1000, 4000


def metric_legend(cols, width: int = 88) -> str:
    """The METRICS entries for these columns, wrapped under an aligned name."""
    import textwrap

    cols = [c for c in cols if c in METRICS]
    w = max(map(len, cols))
    return "\n".join(textwrap.fill(METRICS[c], width, initial_indent=f"  {c.ljust(w)}  ",
                                   subsequent_indent=" " * (w + 4)) for c in cols)


def _estimate_line(plan, threads: str) -> str:
    adaptive = [r for r in plan.runs if r.measured]
    probe = ", ".join(f"{r.solver} ~{r.nfe}" for r in adaptive)
    return (f"plan: {len(plan.runs)} runs, {plan.total_nfe} score evaluations"
            + (f" (adaptive {probe}, measured on a subset)" if adaptive else "")
            + f"; one evaluation of n = {plan.n} takes {1e3 * plan.sec_per_eval:.3g} ms ({threads})"
            + f" -> about {duration(plan.estimate_s)} ({duration(plan.eval_s)} of score evaluations, "
              f"{duration(plan.overhead_s)} of solver overhead, {duration(plan.metric_s * len(plan.runs))} "
              f"of metrics)")



def _run_label(run) -> str:
    return f"{run.solver} {run.steps} steps" if run.steps is not None else f"{run.solver} adaptive"


COMPARE_HELP = f"""Run every (solver, steps) pair from the same noise and score the samples.

Prints an aligned table (with a legend of its columns) and writes OUT/results.csv, OUT/results.json
(settings, versions, seed), OUT/quality_vs_nfe.png and OUT/samples.png. Before the first run it
prints the planned score evaluations and an estimate of the time (from one timed evaluation); one
progress bar counts score evaluations, so its ETA is weighted by nfe. Defaults are sized to the
model: an exact-score oracle is cheap and gets {ORACLE_STEPS} steps and n = {ORACLE_N}; a
checkpoint gets {NETWORK_STEPS} steps and n = {NETWORK_N}.

\b
Columns:
{metric_legend(list(METRICS), width=78)}

\b
Examples:
  scoresde compare --sde ve --solvers heun,dpmpp_2m,pc --steps 10,20,50 --n 2000 --out results/ve
  scoresde compare --model runs/ring_vp/checkpoint.pt --max-nfe 60 -o ddim.eta=0.5 -o pf_ode.rtol=1e-3
"""


@click.command("compare", help=COMPARE_HELP)
@model_options
@click.option("--solvers", "solver_list", default=DEFAULT_SOLVERS, metavar="A,B,...",
              help="comma-separated solver names (see `scoresde solvers`)")
@click.option("--steps", default=None, metavar="K,K,...",
              help=f"step counts to try [default: {ORACLE_STEPS} for an oracle, {NETWORK_STEPS} for a checkpoint; "
                   f"a grid file implies its own]")
@click.option("--grid", type=GridParam(), default=None,
              help="time grid for every solver, or a .json file of times [default: each solver's own]")
@click.option("--n", type=click.IntRange(min=2), default=None,
              help=f"samples per run [default: {ORACLE_N} for an oracle, {NETWORK_N} for a checkpoint]")
@click.option("--max-nfe", type=click.IntRange(min=1), default=None,
              help="skip runs that would use more score evaluations than this")
@option_flag
@click.option("--seed", type=SEED, default=0, help="seed for x_T and the noise (shared by all runs)")
@click.option("--out", type=click.Path(file_okay=False), default="results/compare", help="output folder")
@click.option("--device", default="cpu", metavar="auto|cpu|cuda", help="where to run")
@click.option("--threads", default="auto", metavar="auto|N",
              help="CPU threads; auto times one evaluation on torch's default count and on 1 and keeps the "
                   "faster (on a busy shared CPU, 2 threads can be 10-40x slower than 1)")
@click.option("--float64", is_flag=True, help="solve in float64")
@batch_options
@click.option("--no-plots", is_flag=True, help="skip the PNG figures")
@click.option("--quiet", is_flag=True, help="no estimate and no progress bar")
@click.option("--features", "features_path", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="image models: also a Fréchet distance in the features of this TorchScript module "
                   "(images (B, C, H, W) on [-1, 1] -> (B, F))")
@click.option("--overwrite", is_flag=True, help="replace an existing OUT folder")
def command(model, sde_name, solver_list, steps, grid, n, max_nfe, option_pairs, seed, out, device, threads, float64,
            batch_size, cuda_graph, no_plots, quiet, features_path, overwrite):
    import math

    import torch

    import solvers

    from scoresde.evaluation.compare import best_at_nfe, far_from_data, fastest_thread_count, perfect_sampler_band, run_compare
    from scoresde._io import atomic_dir, check_new_output, write_csv, write_json
    from scoresde.evaluation.plots import run_title

    check_new_output(out, overwrite, "--out")
    names = parse_list(solver_list, "solvers", allowed=solvers.available())
    options = solver_option_values(option_pairs, names)
    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        raise CLIError(f"--threads {threads!r}: give auto or a whole number >= 1")
    is_oracle = model.startswith("oracle:")
    implied = grid_steps(grid)
    steps_list = parse_list(steps or str(implied or (ORACLE_STEPS if is_oracle else NETWORK_STEPS)), "steps",
                             cast=int, minimum=1)
    if implied is not None and steps_list != [implied]:
        raise CLIError(f"--steps {steps} disagrees with --grid {grid}, which has {implied} steps; leave --steps out")
    dev = to_device(device)
    resolved = resolve(model, sde_name, dev)
    feature_net = None
    if features_path:
        from scoresde.evaluation.metrics import load_feature_net

        if len(resolved.shape) != 3:
            raise CLIError(f"--features scores images; model {model} makes samples of shape {resolved.shape}")
        feature_net = load_feature_net(features_path)
    n = n or (ORACLE_N if is_oracle else NETWORK_N)
    dtype = torch.float64 if float64 else torch.float32
    thread_note, threads_before = dev.type, torch.get_num_threads()
    if dev.type == "cpu":
        if threads == "auto":
            probe = resolved.sde.prior_sample((n, *resolved.shape), generator=torch.Generator().manual_seed(seed),
                                              dtype=dtype)
            fastest_thread_count(resolved.score_fn, probe, batch_size=batch_size)
        else:
            torch.set_num_threads(int(threads))
        k = torch.get_num_threads()
        thread_note = f"cpu, {k} thread{'s' * (k > 1)}"
    title = run_title(model, resolved.sde.config(), n, seed, (resolved.info or {}).get("step"))
    seen = {}

    def on_plan(plan):
        seen["plan"] = plan
        if not plan.runs:
            cheapest = min(plan.skipped, key=lambda r: r.nfe)
            raise CLIError(f"--max-nfe {max_nfe}: every run needs more; the cheapest is {_run_label(cheapest)} "
                           f"({cheapest.nfe} nfe)")
        click.echo(title)
        if plan.skipped:
            click.echo(f"skipping {len(plan.skipped)} run(s) over --max-nfe {max_nfe}: "
                       + ", ".join(f"{_run_label(r)} ({'~' * r.measured}{r.nfe} nfe)" for r in plan.skipped),
                       err=True)
        if not quiet:
            click.echo(_estimate_line(plan, thread_note), err=True)

    t0 = time.perf_counter()
    try:
        rows, samples = run_compare(resolved, names, steps_list, n=n, seed=seed, grid=grid, device=dev, dtype=dtype,
                                    progress=not quiet, options=options, feature_net=feature_net,
                                    batch_size=batch_size, cuda_graph=cuda_graph, max_nfe=max_nfe, on_plan=on_plan)
    finally:  # the thread count is process-wide: leave it as found (the CLI may run in-process)
        torch.set_num_threads(threads_before)
    wall = time.perf_counter() - t0
    plan = seen["plan"]
    from scoresde.evaluation.compare import MIN_METRIC_SAMPLES

    if n < MIN_METRIC_SAMPLES and len(resolved.shape) != 3:  # the metrics would be noise: none shown or saved
        rows = [{k: r[k] for k in ("solver", "grid", "schedule", "steps", "nfe", "wall_s") if k in r} for r in rows]
    cols = [c for c in ("solver", "grid", "schedule", "steps", "nfe", "wall_s", "std_ratio", "mode_w2", "off_mode",
                        "mode_tv", "sw2", "precision", "recall", "fd") if any(c in r for r in rows)]
    click.echo(format_table(rows, cols))
    click.echo(metric_legend(cols))
    band = perfect_sampler_band(resolved, n, seed)
    if "precision_floor" in rows[0]:
        floors = ", ".join(f"{k} {rows[0][k + '_floor']:.4g}" for k in ("sw2", "precision", "recall", "fd")
                           if k + "_floor" in rows[0])
        click.echo(f"floors (two disjoint samples of size {n} of {(resolved.info or {}).get('reference')}): {floors}")
    elif "sw2_floor" in rows[0]:
        click.echo(f"sw2 floor (two exact data samples of size {n}): {rows[0]['sw2_floor']:.4g}")
    if band is not None:
        click.echo(f"exact samples of size {n} score {band['metric']} {band['lo']:.3g} to {band['hi']:.3g} "
                   f"({band['draws']} draws): a perfect sampler lands in this range")
    if "sw2" not in cols:
        click.echo(f"no quality metrics: they need at least {MIN_METRIC_SAMPLES} samples per run (got --n {n})"
                   if n < MIN_METRIC_SAMPLES else "no quality metrics: this model has no ground truth to score against")
    else:
        for budget in (5, 10, 20):
            best = best_at_nfe(rows, budget)
            if best:
                detail = ", ".join(f"{k} {best[k]:.4g}" for k in ("mode_w2", "std_ratio", "off_mode", "sw2") if k in best)
                click.echo(f"best at <= {budget} nfe: {best['solver']} ({best['grid']} grid, {best['steps']} steps, "
                           f"{best['nfe']} nfe; {detail})")
            else:
                click.echo(f"best at <= {budget} nfe: no run fits (use --steps with fewer steps)")
        best = best_at_nfe(rows, math.inf)
        why = far_from_data(best, band)
        if why:
            click.echo(f"WARNING: even the best run ({best['solver']}, {best['nfe']} nfe) is far from the data: {why}. "
                       f"If the runs with the most steps are no better, the model, not the solver, is at fault "
                       f"(train longer, or check the loss).")
    click.echo(f"total {wall:.1f} s (estimated {duration(plan.estimate_s)})")
    settings = dict(model=model, sde=resolved.sde.config(), solvers=names, steps=steps_list, grid=grid, n=n,
                    seed=seed, device=str(dev), threads=thread_note, float64=float64, max_nfe=max_nfe,
                    options={k: v for k, v in options.items() if v}, features=features_path, batch_size=batch_size,
                    cuda_graph=cuda_graph)
    with atomic_dir(out, overwrite) as tmp:
        write_csv(os.path.join(tmp, "results.csv"), rows)
        write_json(os.path.join(tmp, "results.json"),
                   dict(settings=settings, versions=versions(), wall_total_s=wall, sec_per_eval=plan.sec_per_eval,
                        estimated_s=plan.estimate_s, perfect_sampler=band,
                        skipped=[dict(solver=r.solver, steps=r.steps, nfe=r.nfe) for r in plan.skipped], rows=rows))
        written = ["results.csv", "results.json"]
        if not no_plots:
            from scoresde.evaluation.plots import quality_vs_nfe, samples_panel

            quality_vs_nfe(rows, os.path.join(tmp, "quality_vs_nfe.png"), title=title, band=band)
            if resolved.oracle is not None:
                ref = resolved.oracle.sample(n, generator=torch.Generator().manual_seed(seed))
            elif resolved.data is not None:  # images: a few real ones beside the samples; vectors: n points
                ref = resolved.data[:16] if len(resolved.shape) == 3 else resolved.data[:n]
            else:
                ref = None
            nfe = {(r["solver"], r["steps"] if r["steps"] != "" else None): r["nfe"] for r in rows}
            samples_panel(samples, os.path.join(tmp, "samples.png"), reference=ref, nfe=nfe, title=title)
            written += ["quality_vs_nfe.png", "samples.png"]
    click.echo(f"wrote {', '.join(os.path.join(out, w) for w in written)}")



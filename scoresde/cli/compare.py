"""`scoresde compare`: every (solver, steps) pair from the same noise, scored."""
from __future__ import annotations

import os

import click

from scoresde.cli._common import (DEFAULT_SOLVERS, SEED, SOLVER_NAMES, batch_options, check_model_path, class_option,
    CLIError, conditioned, data_source, duration, format_table, grid_steps, GridParam, model_options, option_flag,
    output_overwrite, parse_list, resolve, solver_option_values, threads_option, to_device)


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
    "path_err": "models without an oracle: RMS distance per dimension to the pf_ode run's samples from the same "
                "x_T (the model's own converged flow); deterministic runs only; ranks them where the distribution "
                "metric cannot tell them apart",
    "w": "the guidance weight of the run: (1 + w)·s(x, c) − w·s(x, ∅); 0 is the conditional model",
    "class_acc": "--class: share of samples nearest to one of the class's own modes (ideal 1)",
    "diversity": "--class: modes of the class the samples use, exp(entropy of their shares), over the data's "
                 "(ideal 1)",
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


def _estimate_line(plan) -> str:
    adaptive = [r for r in plan.runs if r.measured]
    probe = ", ".join(f"{r.solver} ~{r.nfe}" for r in adaptive)
    long = sorted({r.steps for r in plan.runs if r.extrapolated})
    return (f"plan: {len(plan.runs)} runs, {plan.total_nfe} score evaluations"
            + (f" (adaptive {probe}, measured on a subset)" if adaptive else "")
            + (f" ({', '.join(map(str, long))} steps: counted from shorter replays)" if long else "")
            + f"; one evaluation of n = {plan.n} takes {1e3 * plan.sec_per_eval:.3g} ms ({plan.threads})"
            + f" -> about {duration(plan.estimate_s)} ({duration(plan.eval_s)} of score evaluations, "
              f"{duration(plan.overhead_s)} of solver overhead, {duration(plan.metric_s * len(plan.runs))} "
              f"of metrics)"
            + (f"; memory about {_gb(plan.memory.total)}" + (f" of {_gb(plan.memory.available)} available"
                                                           if plan.memory.available else "") if plan.memory else ""))


def _gb(b) -> str:
    from scoresde.evaluation.compare import _gb as fmt

    return fmt(b)


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
  scoresde compare --model oracle:gmm8c4 --class arc0 --guidance 0,1,3 --solvers heun,dpmpp_2m --steps 20
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
@threads_option
@click.option("--float64", is_flag=True, help="solve in float64")
@batch_options
@click.option("--no-plots", is_flag=True, help="skip the PNG figures")
@click.option("--quiet", is_flag=True, help="no estimate and no progress bar")
@click.option("--features", "features_path", default=None, type=click.Path(dir_okay=False), metavar="PATH",
              help="image models: also a Fréchet distance in the features of this TorchScript module "
                   "(images (B, C, H, W) on [-1, 1] -> (B, F))")
@click.option("--reference", default=None, metavar="SOURCE",
              help="data to score samples against when the model brings none (a pretrained model): a .npy/.npz "
                   "file (uint8 images are mapped to [-1, 1]; FILE.npz:NAME picks an array) or a data set name")
@click.option("--overwrite", is_flag=True, help="replace an existing OUT folder (an empty one is always used)")
@class_option
@click.option("--guidance", "guidance_list", default=None, metavar="W,W,...",
              help="conditional models: classifier-free guidance weights w, (1 + w)·s(x, c) − w·s(x, ∅) (0: the "
                   "conditional model; diffusers' guidance_scale = 1 + w); several are a sweep: OUT/w<W>/ per "
                   "weight, OUT/guidance.csv and OUT/guidance.png")
def command(model, sde_name, solver_list, steps, grid, n, max_nfe, option_pairs, seed, out, device, threads, float64,
            batch_size, cuda_graph, no_plots, quiet, features_path, reference, overwrite, class_, guidance_list):
    # every input is checked before torch is imported and before the --out check, so a typo is
    # answered at once and is never hidden behind "already exists"
    names = parse_list(solver_list, "solvers", allowed=SOLVER_NAMES)
    is_oracle = model.startswith("oracle:")
    implied = grid_steps(grid)
    steps_list = parse_list(steps or str(implied or (ORACLE_STEPS if is_oracle else NETWORK_STEPS)), "steps",
                            cast=int, minimum=1)
    if implied is not None and steps_list != [implied]:
        raise CLIError(f"--steps {steps} disagrees with --grid {grid}, which has {implied} steps; leave --steps out")
    weights = _weights(guidance_list)
    check_model_path(model)
    if features_path and not os.path.isfile(features_path):
        raise CLIError(f"--features {features_path!r}: no such file")
    import torch

    from scoresde.evaluation.compare import CompareInterrupted, MemoryBudgetError, compare

    options = solver_option_values(option_pairs, names)
    overwrite = output_overwrite(out, overwrite, "--out")
    dev = to_device(device)
    resolved = resolve(model, sde_name, dev)
    guided = [conditioned(resolved, class_, w, guidance_list) for w in weights or [None]]
    if features_path and len(resolved.shape) != 3:
        raise CLIError(f"--features scores images; model {model} makes samples of shape {resolved.shape}")
    if resolved.describe and not quiet:
        click.echo(resolved.describe, err=True)
    if reference is not None:
        _use_reference(resolved, reference)
    n = n or (ORACLE_N if is_oracle else NETWORK_N)

    def on_plan(plan):
        if not plan.runs:
            cheapest = min(plan.skipped, key=lambda r: r.nfe)
            raise CLIError(f"--max-nfe {max_nfe}: every run needs more; the cheapest is {_run_label(cheapest)} "
                           f"({cheapest.nfe} nfe)")
        click.echo(plan.title)
        if plan.skipped:
            click.echo(f"skipping {len(plan.skipped)} run(s) over --max-nfe {max_nfe}: "
                       + ", ".join(f"{_run_label(r)} ({'~' * r.measured}{r.nfe} nfe)" for r in plan.skipped),
                       err=True)
        if not quiet:
            click.echo(_estimate_line(plan), err=True)

    def run(m, label, folder):
        try:
            result = compare(m, names, steps_list, n=n, seed=seed, grid=grid, device=dev,
                             dtype=torch.float64 if float64 else torch.float32, progress=not quiet, options=options,
                             features=features_path, batch_size=batch_size, cuda_graph=cuda_graph, max_nfe=max_nfe,
                             threads=threads, label=label, on_plan=on_plan)
        except CompareInterrupted as e:
            raise KeyboardInterrupt(_keep_partial(e, folder)) from None
        except MemoryBudgetError as e:
            raise CLIError(e.need.why_not("--n")) from None
        return result

    if len(guided) == 1:
        g = guided[0]
        label = model if g.label is None else f"{model} class {g.class_names[g.label]} w={weights[0] if weights else 0:g}"
        result = run(g, label, out)
        _print_report(result, n, resolved.reference_name)
        written = result.write(out, plots=not no_plots, overwrite=overwrite)
        click.echo(f"wrote {', '.join(written)}")
        return
    _sweep(guided, weights, run, model, out, n, no_plots, overwrite)


def _weights(text: str | None) -> list[float] | None:
    """--guidance W,W,... as finite floats in the order given (a repeated one is an error)."""
    import math

    if text is None:
        return None
    weights = parse_list(text, "guidance", cast=float)
    bad = next((w for w in weights if not math.isfinite(w)), None)
    if bad is not None:
        raise CLIError(f"--guidance: {bad} is not a finite number")
    if len(set(weights)) != len(weights):
        raise CLIError(f"--guidance {text}: a weight is repeated")
    return weights


def _sweep(guided, weights, run, model: str, out: str, n: int, no_plots: bool, overwrite: bool) -> None:
    """compare at every guidance weight: one table with a w column, OUT/w<W>/ holding each weight's
    full report, OUT/guidance.csv (every run) and OUT/guidance.png (class accuracy, within-mode W2
    and diversity against w)."""
    from scoresde._io import atomic_dir, write_csv

    cls = guided[0].class_names[guided[0].label]
    results = []
    for w, g in zip(weights, guided):
        click.echo(f"guidance w = {w:g} (class {cls!r})")
        results.append(run(g, f"{model} class {cls} w={w:g}", os.path.join(out, f"w{w:g}")))
    records = [dict(w=w, **r) for w, res in zip(weights, results) for r in res.records]
    cols = [c for c in ("w", "solver", "steps", "nfe", "wall_s", "class_acc", "diversity", "mode_w2", "std_ratio",
                        "off_mode", "sw2") if any(c in r for r in records)]
    click.echo(format_table(records, cols))
    click.echo(metric_legend(cols))
    band = results[0].band
    if band is not None:
        click.echo(f"exact samples of class {cls!r} (size {n}) score {band['metric']} {band['lo']:.3g} to "
                   f"{band['hi']:.3g} ({band['draws']} draws)")
    with atomic_dir(out, overwrite) as tmp:
        for w, res in zip(weights, results):
            res.write(os.path.join(tmp, f"w{w:g}"), plots=not no_plots)
        write_csv(os.path.join(tmp, "guidance.csv"), records)
        written = ["guidance.csv"] + [f"w{w:g}/" for w in weights]
        if not no_plots:
            from scoresde.evaluation.plots import guidance_sweep

            guidance_sweep(records, os.path.join(tmp, "guidance.png"),
                           title=f"{model} · class {cls} · n = {n} · guidance sweep")
            written.insert(1, "guidance.png")
    click.echo(f"wrote {', '.join(os.path.join(out, w) for w in written)}")
    click.echo(f"total {sum(r.wall_s for r in results):.1f} s")


def _use_reference(resolved, source: str, most: int = 20000) -> None:
    """--reference: at most `most` samples of SOURCE become the data the runs are scored against."""
    import torch

    ds = data_source(source, "--reference")
    x = ds.head(most, torch.Generator().manual_seed(0)).float().cpu()
    if tuple(x.shape[1:]) != tuple(resolved.shape):
        raise CLIError(f"--reference: samples have shape {tuple(x.shape[1:])}, the model makes {tuple(resolved.shape)}")
    resolved.load_reference, resolved.data, resolved.reference_name = None, x, os.path.basename(source)


def _keep_partial(e, out: str) -> str:
    """The finished runs of an interrupted compare, printed and written to OUT.partial.csv beside
    the folder (which stays unwritten: it only ever holds a whole run); returns the message."""
    from scoresde._io import write_csv

    if not e.rows:
        return f"{e}; no run had finished, nothing was written"
    records = [r.record() for r in e.rows]
    cols = [c for c in ("solver", "grid", "steps", "nfe", "wall_s", "mode_w2", "off_mode", "sw2") if c in records[0]]
    click.echo(format_table(records, cols))
    path = os.path.normpath(out) + ".partial.csv"
    write_csv(path, records)
    return f"{e}; the finished runs are above and in {path} (partial: {out} was not written)"


def _print_report(result, n: int, reference_name) -> None:
    """The table, its legend, the floors and band, the best run per budget and any warning."""
    from scoresde.evaluation.compare import (MIN_METRIC_SAMPLES, oracle_caution, ranked_by, ranking_key,
                                            schedule_hint)

    rows = result.records
    cols = [c for c in ("solver", "grid", "schedule", "steps", "nfe", "wall_s", "std_ratio", "mode_w2", "off_mode",
                        "mode_tv", "sw2", "precision", "recall", "fd", "path_err") if any(c in r for r in rows)]
    click.echo(format_table(rows, cols))
    click.echo(metric_legend(cols))
    band = result.band
    if "precision_floor" in rows[0]:
        floors = ", ".join(f"{k} {rows[0][k + '_floor']:.4g}" for k in ("sw2", "precision", "recall", "fd")
                           if k + "_floor" in rows[0])
        click.echo(f"floors (two disjoint samples of size {n} of {reference_name}): {floors}")
    elif "sw2_floor" in rows[0]:
        click.echo(f"sw2 floor (two exact data samples of size {n}): {rows[0]['sw2_floor']:.4g}")
    if band is not None:
        click.echo(f"exact samples of size {n} score {band['metric']} {band['lo']:.3g} to {band['hi']:.3g} "
                   f"({band['draws']} draws): a perfect sampler lands in this range")
    if not result.best:
        click.echo(f"no quality metrics: they need at least {MIN_METRIC_SAMPLES} samples per run (got --n {n})"
                   if n < MIN_METRIC_SAMPLES else "no quality metrics: this model has no ground truth to score against")
    cheapest = min((r.nfe for r in result.rows), default=0)
    for budget, best in result.best.items():
        if best:
            # the value the runs are ranked by comes first, so a winner never reads worse than the next budget's
            by = ranked_by(best, result.rows, budget)
            rank = (by, best.metrics["path_err"] if by == "path_err" else ranking_key(best))
            detail = ", ".join(f"{k} {best.metrics[k]:.4g}" for k in ("mode_w2", "std_ratio", "off_mode", "sw2",
                                                                        "path_err") if k in best.metrics)
            click.echo(f"best at <= {budget} nfe: {best.solver} ({best.grid} grid, {best.record()['steps']} steps, "
                       f"{best.nfe} nfe; ranked by {rank[0]} = {rank[1]:.4g}; {detail})")
        elif budget >= cheapest:  # a budget below every planned run was never asked for: say nothing of it
            click.echo(f"best at <= {budget} nfe: no run fits (use --steps with fewer steps)")
    for line in (oracle_caution(result.model), schedule_hint(result.model, result.best)) if result.best else ():
        if line:
            click.echo(line)
    for warning in result.warnings:
        click.echo(f"WARNING: {warning}")
    click.echo(f"total {result.wall_s:.1f} s (estimated {duration(result.plan.estimate_s)})")

"""The `scoresde` command line: solvers | compare | sample | schedule | likelihood | train.

Bad input (an unknown solver, model, SDE or key, bad numbers, a missing or corrupt file)
prints one line naming the value and what is allowed, and exits with code 2; every output
file is written atomically, so Ctrl-C never leaves a half-written one.
"""
from __future__ import annotations

import json
import math
import os
import platform
import signal
import sys
import threading
import time

import click

from scoresde import __version__  # torch is imported inside the commands, so --help answers fast

SDE_CHOICES = ["vp", "vp-cosine", "subvp", "ve"]
DEFAULT_SOLVERS = "ddpm,ddim,euler_maruyama,pc,euler,heun,dpmpp_2m,dpmpp_3m,deis,pf_ode"


class CLIError(click.ClickException):
    exit_code = 2


class _Group(click.Group):
    """Turns every expected failure into one line on stderr and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        old_term = _sigterm_interrupts()
        try:
            rv = super().main(args, prog_name or "scoresde", complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except (KeyboardInterrupt, _Interrupted) as e:  # the trainer's carries the step it checkpointed
            click.echo(f"Interrupted: {e}" if str(e) else "Interrupted; no partial output was written.", err=True)
            sys.exit(130)
        except click.ClickException as e:
            ctx_hint = f" (see 'scoresde {e.ctx.info_name} --help')" if getattr(e, "ctx", None) and \
                e.ctx.info_name != "scoresde" else ""
            click.echo(f"Error: {e.format_message()}{ctx_hint}".replace("\n", " "), err=True)
            sys.exit(2)
        except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
                FloatingPointError) as e:
            click.echo(f"Error: {e}".replace("\n", " "), err=True)
            sys.exit(2)
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:  # past click's own handler, which would print a bare "Aborted!"
            raise _Interrupted(str(e)) from None


class _Interrupted(Exception):
    pass


def _sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt, so temp files are removed as on Ctrl-C; returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


SEED = click.IntRange(0, 2 ** 64 - 1)


class FiniteRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf, naming the option."""

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{v} is not a finite number", param, ctx)
        return v


def _parse_list(value: str, name: str, cast=str, allowed=None, minimum=None):
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise CLIError(f"--{name} is empty; give a comma-separated list")
    out = []
    for v in items:
        try:
            v = cast(v)
        except ValueError:
            raise CLIError(f"--{name}: {v!r} is not a valid {cast.__name__}") from None
        if allowed is not None and v not in allowed:
            raise CLIError(f"--{name}: unknown value {v!r}; choose from: {', '.join(allowed)}")
        if minimum is not None and v < minimum:
            raise CLIError(f"--{name}: {v} is below the minimum {minimum}")
        out.append(v)
    return out


def _device(name: str) -> "torch.device":  # noqa: F821
    from scoresde._checks import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise CLIError(f"--device: {e}") from None


def _resolve(model: str, sde_name: str | None, device, option: str = "--model"):
    from scoresde.evaluation.resolve import resolve_model
    from scoresde.sde import make_sde

    hint = "; or use oracle:gmm8, oracle:gaussian, oracle:gaussianD" if option == "--model" else ""
    if not model.startswith("oracle:") and os.path.isdir(model):
        raise CLIError(f"{option} {model!r} is a folder, not a checkpoint file{hint}")
    if not model.startswith("oracle:") and not os.path.exists(model):
        raise CLIError(f"{option} {model!r}: no such checkpoint file{hint}")
    sde = make_sde(sde_name) if sde_name else None
    return resolve_model(model, sde=sde, device=device)


def _versions() -> dict:
    import numpy
    import torch
    import torchdiffeq
    import torchsde

    return {"scoresde": __version__, "torch": torch.__version__, "torchdiffeq": torchdiffeq.__version__,
            "torchsde": torchsde.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}


def _coerce(text: str, default, what: str):
    """A command-line string typed like the option's default in the solver's signature."""
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise CLIError(f"{what} takes true or false (default {default}), got {text!r}")
    for typ, name in ((int, "an integer"), (float, "a number")):
        if isinstance(default, typ):
            try:
                return typ(text)
            except ValueError:
                raise CLIError(f"{what} takes {name} (default {default!r}), got {text!r}") from None
    return text


def solver_option_values(pairs, solver_names: list[str]) -> dict:
    """-o KEY=VALUE (every listed solver that takes KEY) and -o SOLVER.KEY=VALUE (that solver)
    -> {solver: {key: value}}, typed from the defaults in each solver function's signature.
    Unknown keys get the Python API's own message (solvers.check_options)."""
    import solvers

    out = {s: {} for s in solver_names}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        target, dot, key = key.strip().rpartition(".")
        if not sep or not key:
            raise CLIError(f"-o {pair!r}: write KEY=VALUE or SOLVER.KEY=VALUE")
        if dot:
            if target not in solver_names:
                raise CLIError(f"-o {pair!r}: solver {target!r} is not being run (solvers: {', '.join(solver_names)})")
            takers = [target]
            solvers.check_options(target, {key: None})
        else:
            takers = [s for s in solver_names if key in solvers.solver_options(s)]
            if not takers and len(solver_names) == 1:
                solvers.check_options(solver_names[0], {key: None})
            if not takers:
                accepted = "; ".join(f"{s}: {', '.join(solvers.solver_options(s)) or 'none'}" for s in solver_names)
                raise CLIError(f"-o {pair!r}: no solver being run takes option {key!r} ({accepted})")
        for s in takers:
            out[s][key] = _coerce(text, solvers.solver_options(s)[key], f"-o {pair!r}: option {key!r} of {s!r}")
    return out


def option_flag(f):
    """-o/--option KEY=VALUE, repeatable: options of the solver function (see `scoresde solvers`)."""
    return click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
                        help="a solver option, e.g. -o eta=0.5, -o variance=beta, -o pf_ode.rtol=1e-4 "
                             "(repeatable; `scoresde solvers` lists each solver's options)")(f)


def batch_options(f):
    """--batch-size and --cuda-graph, shared by the commands that sample."""
    f = click.option("--cuda-graph", is_flag=True,
                     help="replay the network from CUDA graphs (no per-step launch overhead; same samples)")(f)
    return click.option("--batch-size", type=click.IntRange(min=1), default=None,
                        help="evaluate the network on at most this many samples at a time (same samples as "
                             "one batch) [default: all n at once]")(f)


class GridParam(click.ParamType):
    """A named time grid, or a .json file of explicit times (as `scoresde schedule` writes)."""

    name = "tuned|uniform|quadratic|edm|logsnr|FILE.json"

    def convert(self, value, param, ctx):
        import solvers

        if value in solvers.GRID_NAMES:
            return value
        if str(value).endswith(".json"):
            if not os.path.isfile(value):
                self.fail(f"grid file {value!r} does not exist", param, ctx)
            try:
                solvers.load_grid(value)
            except ValueError as e:
                self.fail(str(e), param, ctx)
            return value
        self.fail(f"{value!r} is not one of {', '.join(map(repr, solvers.GRID_NAMES))} or a .json grid file "
                  f"(see `scoresde schedule`)", param, ctx)


def _grid_steps(grid: str | None) -> int | None:
    """Steps implied by a grid file, else None."""
    import solvers

    return None if grid is None or grid in solvers.GRID_NAMES else len(solvers.load_grid(grid)) - 1


def model_options(f):
    """--model and --sde, shared by the commands that sample."""
    f = click.option("--sde", "sde_name", type=click.Choice(SDE_CHOICES), default=None,
                     help="forward SDE for an oracle [default: vp]; a checkpoint brings its own")(f)
    return click.option("--model", default="oracle:gmm8", metavar="SPEC",
                        help="oracle:gmm8 | oracle:gaussian | oracle:gaussianD | a checkpoint file")(f)


def format_table(rows: list[dict], cols: list[str]) -> str:
    """Column-aligned text table; floats get 4 significant digits."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="scoresde")
def cli():
    """Score-based diffusion through SDEs: compare samplers, sample, measure likelihoods, train.

    \b
    Start here:  scoresde compare            (all solvers on the 8-mode ring oracle, ~1 min on CPU)
                 scoresde solvers            (what each solver and time grid does)
    """


@cli.command("solvers")
def solvers_cmd():
    """List the solvers (with their -o options and defaults) and the time grids.

    Example: scoresde solvers
    """
    import solvers

    w = max(map(len, solvers.SOLVERS))
    tuned_for, max_k = {}, {}
    for sde, fam in solvers.tuned.table().items():
        for name, shapes in fam.items():
            tuned_for.setdefault(name, []).append(sde)
            max_k[name] = max(shapes)
    click.echo("solvers (default grid in brackets, per SDE where they differ):")
    for name, spec in solvers.SOLVERS.items():
        grid = spec.grid if not spec.grid_by_sde else ", ".join(f"{k}: {v}" for k, v in spec.grid_by_sde.items())
        if tuned_for.get(name) and name in solvers.tuned.DEFAULT_FOR:
            grid = f"tuned up to {max_k[name]} steps on {', '.join(tuned_for[name])}; else {grid}"
        elif tuned_for.get(name):
            grid += "; grid=tuned available"
        click.echo(f"  {name.ljust(w)}  [{grid}] {spec.description}")
        opts = solvers.solver_options(name)
        if opts:
            click.echo(f"  {' ' * w}  options: " + ", ".join(f"-o {k}={v}" for k, v in opts.items()))
    click.echo("time grids:")
    for name, desc in solvers.GRID_NAMES.items():
        click.echo(f"  {name.ljust(w)}  {desc}")


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
            + f" -> about {_duration(plan.estimate_s)} ({_duration(plan.eval_s)} of score evaluations, "
              f"{_duration(plan.overhead_s)} of solver overhead, {_duration(plan.metric_s * len(plan.runs))} "
              f"of metrics)")


def _duration(s: float) -> str:
    return "<0.1 s" if s < 0.1 else f"{s:.2g} s" if s < 10 else f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


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


@cli.command(help=COMPARE_HELP)
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
def compare(model, sde_name, solver_list, steps, grid, n, max_nfe, option_pairs, seed, out, device, threads, float64,
            batch_size, cuda_graph, no_plots, quiet, features_path, overwrite):
    import math

    import torch

    import solvers

    from scoresde.evaluation.compare import best_at_nfe, far_from_data, fastest_thread_count, perfect_sampler_band, run_compare
    from scoresde._io import atomic_dir, check_new_output, write_csv, write_json
    from scoresde.evaluation.plots import run_title

    check_new_output(out, overwrite, "--out")
    names = _parse_list(solver_list, "solvers", allowed=solvers.available())
    options = solver_option_values(option_pairs, names)
    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        raise CLIError(f"--threads {threads!r}: give auto or a whole number >= 1")
    is_oracle = model.startswith("oracle:")
    implied = _grid_steps(grid)
    steps_list = _parse_list(steps or str(implied or (ORACLE_STEPS if is_oracle else NETWORK_STEPS)), "steps",
                             cast=int, minimum=1)
    if implied is not None and steps_list != [implied]:
        raise CLIError(f"--steps {steps} disagrees with --grid {grid}, which has {implied} steps; leave --steps out")
    dev = _device(device)
    resolved = _resolve(model, sde_name, dev)
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
    title = run_title(model, resolved.sde.config(), n, seed, resolved.step)
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
        click.echo(f"floors (two disjoint samples of size {n} of {resolved.reference_name}): {floors}")
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
    click.echo(f"total {wall:.1f} s (estimated {_duration(plan.estimate_s)})")
    settings = dict(model=model, sde=resolved.sde.config(), solvers=names, steps=steps_list, grid=grid, n=n,
                    seed=seed, device=str(dev), threads=thread_note, float64=float64, max_nfe=max_nfe,
                    options={k: v for k, v in options.items() if v}, features=features_path, batch_size=batch_size,
                    cuda_graph=cuda_graph)
    with atomic_dir(out, overwrite) as tmp:
        write_csv(os.path.join(tmp, "results.csv"), rows)
        write_json(os.path.join(tmp, "results.json"),
                   dict(settings=settings, versions=_versions(), wall_total_s=wall, sec_per_eval=plan.sec_per_eval,
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


@cli.command()
@model_options
@click.option("--solver", default="heun", metavar="NAME", help="see `scoresde solvers`")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="solver steps [default: 50; a grid file implies its own]")
@click.option("--grid", type=GridParam(), default=None,
              help="time grid, or a .json file of times [default: the solver's own]")
@click.option("--n", type=click.IntRange(min=1), default=1000, help="number of samples")
@click.option("--seed", type=SEED, default=0, help="random seed")
@click.option("--denoise", is_flag=True, help="finish with Tweedie's x̂_0 at eps (one more evaluation)")
@click.option("--out", type=click.Path(dir_okay=False), default="samples.npz", help="output .npz file")
@click.option("--png", type=click.Path(dir_okay=False), default=None, help="also save a picture")
@click.option("--device", default="cpu", metavar="auto|cpu|cuda", help="where to run")
@batch_options
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--overwrite", is_flag=True, help="replace existing --out / --png files")
@option_flag
def sample(model, sde_name, solver, steps, grid, n, seed, denoise, out, png, device, batch_size, cuda_graph, quiet,
           overwrite, option_pairs):
    """Draw samples with one solver and save them as .npz (x, nfe, t_grid, settings).

    \b
    Example:
      scoresde sample --model oracle:gmm8 --solver dpmpp_2m --steps 20 --n 5000 --out ring.npz --png ring.png
      scoresde sample --solver ddim -o eta=0.5 --steps 50 --out ddim.npz
    """
    import numpy as np
    import torch

    import solvers
    from tqdm.auto import tqdm

    from scoresde._io import atomic_path, check_new_output

    if solver not in solvers.available():
        raise CLIError(f"--solver: unknown solver {solver!r}; choose from: {', '.join(solvers.available())}")
    if not out.endswith(".npz"):
        raise CLIError(f"--out {out!r}: the output must be a .npz file")
    options = solver_option_values(option_pairs, [solver])[solver]
    check_new_output(out, overwrite, "--out")
    if png:
        check_new_output(png, overwrite, "--png")
    implied = _grid_steps(grid)
    if implied is not None and steps not in (None, implied):
        raise CLIError(f"--steps {steps} disagrees with --grid {grid}, which has {implied} steps; leave --steps out")
    steps = steps or implied or 50
    dev = _device(device)
    resolved = _resolve(model, sde_name, dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    bar = tqdm(total=steps, desc=solver, disable=quiet, leave=False)
    t0 = time.perf_counter()
    res = solvers.sample(resolved.score_fn, resolved.sde, shape=(n, *resolved.shape), solver=solver,
                         steps=None if implied else steps, grid=grid, generator=g, device=dev, denoise=denoise,
                         batch_size=batch_size, cuda_graph=cuda_graph, callback=lambda info: bar.update(1), **options)
    bar.close()
    wall = time.perf_counter() - t0
    x = res.x.detach().float().cpu()
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, x=x.numpy(), nfe=res.nfe, t_grid=res.t_grid.cpu().numpy(),
                 settings=json.dumps(dict(model=model, sde=resolved.sde.config(), solver=solver, steps=steps,
                                          grid=res.grid, n=n, seed=seed, denoise=denoise, options=options)))
    msg = f"{n} samples, {res.nfe} nfe, {wall:.2f} s -> {out}"
    from scoresde.evaluation.compare import MIN_METRIC_SAMPLES, score_samples

    q = score_samples(x, resolved, seed=seed) if n >= MIN_METRIC_SAMPLES and len(resolved.shape) != 3 else {}
    if q:
        msg += "  (" + ", ".join(f"{k} {v:.4g}" for k, v in q.items()) + ")"
    elif n < MIN_METRIC_SAMPLES and (resolved.oracle is not None or resolved.data is not None):
        msg += f"  (no quality metrics: they need at least {MIN_METRIC_SAMPLES} samples, got --n {n})"
    if png:
        from scoresde.evaluation.plots import save_samples_png

        save_samples_png(x, png, title=f"{solver}, {steps} steps, {res.nfe} nfe")
        msg += f", {png}"
    click.echo(msg)


@cli.command()
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
@click.option("--objective", type=click.Choice(["pathwise", "klub"]), default="pathwise",
              help="pathwise: RMS error to the ODE (deterministic solvers); klub: the KL upper bound of "
                   "Align Your Steps (any solver; needs the model's data or oracle)")
def schedule(model, sde_name, solver, nfe, denoise, out, n_fit, n_eval, max_evals, seed, device, objective):
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
    import torch

    import solvers

    from scoresde._io import write_json

    if solver not in solvers.available():
        raise CLIError(f"--solver: unknown solver {solver!r}; choose from: {', '.join(solvers.available())}")
    if not out.endswith(".json"):
        raise CLIError(f"--out {out!r}: the output must be a .json file")
    dev = _device(device)
    resolved = _resolve(model, sde_name, dev)
    dtype = torch.float32 if isinstance(resolved.score_fn, torch.nn.Module) else torch.float64
    data = None
    if objective == "klub":
        data = resolved.oracle.sample if resolved.oracle is not None else resolved.data
        if data is None:
            raise CLIError(f"--objective klub needs data samples, and model {model!r} has neither an oracle nor "
                           f"reference data")
    fit = solvers.optimize_grid(resolved.score_fn, resolved.sde, solver=solver, nfe=nfe, shape=resolved.shape,
                                denoise=denoise, n_fit=n_fit, n_eval=n_eval, seed=seed, max_evals=max_evals,
                                dtype=dtype, device=dev, objective=objective, data=data)
    write_json(out, dict(fit.to_json(), model=model, sde=resolved.sde.config(), versions=_versions()))
    if objective == "klub":
        named = ", ".join(f"{k} {v:.4g}" for k, v in fit.named_klubs.items())
        what = f"KL upper bound on {n_eval} fresh draws per step: fitted {fit.klub:.4g}"
    else:
        named = ", ".join(f"{k} {v:.4g}" for k, v in fit.named_errors.items())
        what = f"RMS error to the ODE on {n_eval} fresh points: fitted {fit.error:.4g}"
    click.echo(f"{solver}: {fit.steps} steps, {fit.nfe} nfe{' (with denoise)' if denoise else ''}; {what} "
               f"(named grids: {named}); {fit.evaluations} evaluations, {fit.wall_s:.1f} s -> {out}")


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="TOML run configuration (see configs/)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder (checkpoint, log, previews)")
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoint.pt")
@click.option("--device", default=None, metavar="auto|cpu|cuda", help="overrides train.device")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="overrides train.steps (total steps)")
@click.option("--no-preview", is_flag=True, help="skip the preview PNGs (by default one at the end: a few seconds)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def train(config_path, out, resume, device, steps, no_preview, quiet):
    """Train an ε-network by denoising score matching; EMA weights, atomic checkpoints.

    One run per folder: OUT/.lock names the running trainer, and a second one exits 2.
    Ctrl-C or SIGTERM finishes the step in progress, writes a checkpoint and exits 130;
    --resume then continues bit for bit.  Under torchrun (WORLD_SIZE > 1) it trains with DDP;
    only rank 0 writes files.

    \b
    Examples:
      scoresde train --config configs/ring_vp.toml --out runs/ring_vp
      scoresde train --config configs/ring_vp.toml --out runs/ring_vp --resume --steps 8000
      torchrun --nproc_per_node 2 -m scoresde.cli train --config configs/digits_vp.toml --out runs/digits
    """
    from scoresde.training.config import load_config
    from scoresde.training.trainer import Trainer, init_distributed

    cfg = load_config(config_path)
    if steps is not None:
        cfg.train.steps = steps
    init_distributed()
    t0 = time.perf_counter()
    trainer = Trainer(cfg, out, device=device, resume=resume, progress=not quiet, previews=not no_preview)
    start = trainer.step
    if start >= cfg.train.steps:
        trainer.close()
        raise CLIError(f"the checkpoint in {out} is already at step {start} >= --steps {cfg.train.steps}")
    losses = trainer.train()
    wall = time.perf_counter() - t0
    if trainer.rank == 0:
        tail = losses[-min(len(losses), 100):]
        click.echo(f"trained steps {start} -> {trainer.step} on {trainer.device} in {wall:.1f} s "
                   f"({(trainer.step - start) / wall:.1f} steps/s); loss (mean of last {len(tail)}) "
                   f"{sum(tail) / len(tail):.4f}; checkpoint {os.path.join(out, 'checkpoint.pt')}"
                   + (f"; preview {trainer.last_preview}" if trainer.last_preview else ""))


@cli.command()
@click.option("--model", default=None, metavar="SPEC", help="oracle:gmm8 | oracle:gaussian | oracle:gaussianD")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="a trained checkpoint instead")
@click.option("--sde", "sde_name", type=click.Choice(SDE_CHOICES), default=None,
              help="forward SDE for an oracle [default: vp]")
@click.option("--data", default=None, metavar="SOURCE",
              help="'model' (exact draws from the oracle), a data set name (ring, moons, digits-test, …), "
                   "or a .npy/.npz file (FILE.npz:NAME picks an array) [default: the oracle's draws, or the "
                   "checkpoint's held-out data]")
@click.option("--method", type=click.Choice(["exact", "hutchinson"]), default=None,
              help="divergence [default: exact up to 64 dimensions, hutchinson above (images)]")
@click.option("--probes", type=click.IntRange(min=1), default=1, help="Hutchinson probes per sample")
@click.option("--probe", type=click.Choice(["rademacher", "gaussian"]), default="rademacher")
@click.option("--n", type=click.IntRange(min=1), default=256, help="number of data points")
@click.option("--bits", type=click.IntRange(min=1, max=16), default=None,
              help="data are b-bit levels on [-1, 1]: dequantize and report bits/dim with the +(b-1) offset")
@click.option("--dequant-repeats", type=click.IntRange(min=1), default=1, help="average over dequantization draws")
@click.option("--rtol", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-5)
@click.option("--atol", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-5)
@click.option("--eps", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-5,
              help="start time of the ODE")
@click.option("--batch-size", type=click.IntRange(min=1), default=256)
@click.option("--seed", type=SEED, default=0)
@click.option("--device", default="cpu", metavar="auto|cpu|cuda")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="also write per-sample results (.json)")
@click.option("--quiet", is_flag=True, help="no progress bar")
def likelihood(model, checkpoint, sde_name, data, method, probes, probe, n, bits, dequant_repeats, rtol, atol, eps,
               batch_size, seed, device, out, quiet):
    """Log-likelihood through the probability-flow ODE, in nats and bits/dim.

    Prints mean ± standard error over the data points (and over Hutchinson probes), nfe and time.

    \b
    Examples:
      scoresde likelihood --model oracle:gmm8 --n 128
      scoresde likelihood --checkpoint runs/digits/checkpoint.pt --bits 4 --method hutchinson --probes 4
    """
    import math

    import torch
    from tqdm.auto import tqdm

    from scoresde._io import write_json
    from scoresde.likelihood import bits_per_dim, dequantize, log_likelihood

    if (model is None) == (checkpoint is None):
        raise CLIError("give exactly one of --model oracle:NAME or --checkpoint FILE")
    dev = _device(device)
    resolved = _resolve(model or checkpoint, sde_name, dev, "--model" if model else "--checkpoint")
    from scoresde.training.data import data_from_config, make_dataset

    g = torch.Generator().manual_seed(seed)
    levels = 2 ** bits if bits else None
    if data in (None, "model") and resolved.oracle is not None:
        x = resolved.oracle.sample(n, generator=g, dtype=torch.float64)
    elif data == "model":
        raise CLIError("--data model needs an oracle; pass a data set name or a .npy/.npz file")
    else:
        try:
            if data is None:  # a checkpoint's own held-out split (digits, cifar10, data.holdout); toys draw afresh
                ds = data_from_config(resolved.data_config, "test")
            else:
                is_file = data.endswith((".npy", ".npz")) or ".npz:" in data  # FILE.npz:NAME picks an array
                ds = make_dataset("file", data, "all") if is_file else make_dataset(data)
        except ValueError as e:
            raise CLIError(f"--data: {e}" + ("; or pass --data FILE.npy" if data is None else "")) from None
        x = ds.head(n, g)
        if levels is None and ds.levels is not None:  # integer data bring their levels: 8-bit images get + 7
            levels = ds.levels
    if tuple(x.shape[1:]) != tuple(resolved.shape):
        raise CLIError(f"--data: samples have shape {tuple(x.shape[1:])}, the model expects {tuple(resolved.shape)}")
    # exact oracles run in float64; a network in the precision it was trained in
    x = x.to(dev, torch.float32 if isinstance(resolved.score_fn, torch.nn.Module) else torch.float64)
    D = x[0].numel()
    method = method or ("exact" if D <= 64 else "hutchinson")
    t0 = time.perf_counter()
    per_rep, nfe, se_probe = [], 0, []
    repeats = dequant_repeats if levels else 1
    bar = tqdm(total=repeats * x.shape[0], desc="likelihood", unit="sample", disable=quiet, leave=False)
    for _ in range(repeats):
        xin = dequantize(x, levels=levels, generator=g) if levels else x
        res = log_likelihood(resolved.score_fn, resolved.sde, xin, method=method, rtol=rtol, atol=atol, eps=eps,
                             probes=probes, probe=probe, generator=g, batch_size=batch_size, shape=resolved.shape,
                             callback=bar.update)
        per_rep.append(res.logp.double().cpu())
        nfe += res.nfe
        if res.stderr is not None:
            se_probe.append(res.stderr.double().cpu())
    bar.close()
    logp = torch.stack(per_rep).mean(0)
    wall = time.perf_counter() - t0
    mean, se = logp.mean().item(), (logp.std().item() / math.sqrt(len(logp)) if len(logp) > 1 else float("nan"))
    bpd = bits_per_dim(logp, D, levels=levels) if levels else -logp / (D * math.log(2))
    click.echo(f"model {model or checkpoint}  sde {resolved.sde!r}  n={len(logp)}  D={D}  method={method}"
               + (f" ({probes} {probe} probes)" if method == "hutchinson" else ""))
    click.echo(f"log p     {mean:.4f} ± {se:.4f} nats per sample   ({mean / D:.4f} nats/dim)")
    click.echo(f"bits/dim  {bpd.mean().item():.4f} ± {bpd.std().item() / math.sqrt(len(bpd)) if len(bpd) > 1 else 0:.4f}"
               + (f"   (dequantized {levels}-level data, offset log2({levels}) - 1 = {math.log2(levels) - 1:.3f}, "
                  f"{dequant_repeats} draw(s))" if levels else "   (continuous density, no dequantization offset)"))
    if se_probe:
        click.echo(f"Hutchinson standard error per sample (mean): {torch.cat(se_probe).mean().item():.4f} nats")
    if resolved.oracle is not None and not levels:
        exact = resolved.oracle.log_prob(x.double().cpu())
        click.echo(f"exact log p_0 (oracle)  {exact.mean().item():.4f};  mean |ODE − exact| "
                   f"{(logp - exact).abs().mean().item():.2e} nats")
    click.echo(f"nfe {nfe}   time {wall:.2f} s")
    if out:
        write_json(out, dict(model=model or checkpoint, method=method, n=len(logp), D=D, levels=levels,
                             mean_logp=mean, stderr=se, nfe=nfe, wall_s=wall, logp=logp.tolist(),
                             bpd=bpd.tolist(), versions=_versions()))


def main():
    cli()


if __name__ == "__main__":
    main()

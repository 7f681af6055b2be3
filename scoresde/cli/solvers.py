"""`scoresde solvers`: the solvers, their -o options and the time grids."""
from __future__ import annotations

import click


@click.command("solvers")
def command():
    """List the solvers (with their -o options and defaults) and the time grids.

    Example: scoresde solvers
    """
    import solvers

    w = max(map(len, solvers.SOLVERS))
    tuned_for = {}
    for sde, fam in solvers.tuned.table().items():
        for name in fam:
            tuned_for.setdefault(name, []).append(sde)
    few = solvers.fewstep.table()["grids"]
    click.echo("solvers (default grid in brackets, per SDE where they differ):")
    for name, spec in solvers.SOLVERS.items():
        # an SDE without its own entry falls back to spec.grid: name the fallback too
        grid = spec.grid if not spec.grid_by_sde else ", ".join(
            [f"{k}: {v}" for k, v in spec.grid_by_sde.items()]
            + ([f"others: {spec.grid}"] if set(spec.grid_by_sde) < {"vp", "subvp", "ve"} else []))
        chosen = {fam: few[fam][name] for fam in few if name in few[fam]}
        if chosen:  # the few-step panel's grids, by family and step count (solvers.fewstep)
            grid = ("few-step " + "; ".join(f"{fam}: " + ", ".join(f"{k} steps {g}" for k, g in sorted(by_k.items()))
                                            for fam, by_k in chosen.items())
                    + f"; more steps: {grid}")
        if tuned_for.get(name):
            grid += "; grid=tuned available"
        click.echo(f"  {name.ljust(w)}  [{grid}] {spec.description}")
        opts = solvers.solver_options(name)
        if opts:
            click.echo(f"  {' ' * w}  options: " + ", ".join(f"-o {k}={v}" for k, v in opts.items()))
    best = solvers.fewstep.table()["best"]
    if best:
        click.echo("recommended at few steps (experiments/fewstep_panel.py, error against each model's converged ODE):")
        for fam in best:
            click.echo(f"  {fam.ljust(w)}  {solvers.fewstep.summary(fam)}")
    click.echo("time grids:")
    for name, desc in solvers.GRID_NAMES.items():
        click.echo(f"  {name.ljust(w)}  {desc}")



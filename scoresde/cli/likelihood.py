"""`scoresde likelihood`: log-likelihood and bits/dim through the probability-flow ODE."""
from __future__ import annotations

import time

import click

from scoresde.cli._common import (SDE_CHOICES, SEED, check_model_path, CLIError, conditioned,
    FiniteRange, chosen_threads, resolve, threads_option, duration, to_device, versions)


@click.command("likelihood")
@click.option("--model", default=None, metavar="SPEC",
              help="oracle:gmm8 | oracle:gaussian | oracle:gaussianD | diffusers:PATH | py:module:function")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="a trained checkpoint instead")
@click.option("--sde", "sde_name", type=click.Choice(SDE_CHOICES), default=None,
              help="forward SDE for an oracle [default: vp]")
@click.option("--data", default=None, metavar="SOURCE",
              help="'model' (exact draws from the oracle), a data set name (ring, moons, digits-test, …), "
                   "or a .npy/.npz file (FILE.npz:NAME picks an array) [default: the oracle's draws, or the "
                   "checkpoint's held-out data]")
@click.option("--method", type=click.Choice(["exact", "hutchinson"]), default=None,
              help="divergence [default: exact when its modelled time fits 60 s, else hutchinson; the plan "
                   "line says which and why]")
@click.option("--probes", type=click.IntRange(min=1), default=1, help="Hutchinson probes per sample")
@click.option("--probe", type=click.Choice(["rademacher", "gaussian"]), default="rademacher")
@click.option("--n", type=click.IntRange(min=1), default=256, help="number of data points")
@click.option("--bits", type=click.IntRange(min=1, max=16), default=None,
              help="data are b-bit levels on [-1, 1]: dequantize and report bits/dim with the +(b-1) offset "
                   "[default: the levels of integer data (digits: 17, images: 256), else continuous]; a value "
                   "that contradicts the detected levels is an error")
@click.option("--dequant-repeats", type=click.IntRange(min=1), default=1, help="average over dequantization draws")
@click.option("--rtol", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-5)
@click.option("--atol", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-5)
@click.option("--eps", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=None,
              help="start time of the ODE [default: the SDE's likelihood_eps: 1e-5, or 1/N for a discrete-table "
                   "model (index 0, the least noise it was trained at)]")
@click.option("--batch-size", type=click.IntRange(min=1), default=256)
@click.option("--seed", type=SEED, default=0)
@click.option("--device", default="cpu", metavar="auto|cpu|cuda")
@threads_option
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="also write per-sample results (.json)")
@click.option("--quiet", is_flag=True, help="no plan line and no progress bar")
@click.option("--class", "class_", default=None, metavar="NAME|INDEX",
              help="conditional models: log p(x | class), through the conditional score (guidance w = 0); an "
                   "oracle's default data are then that class's draws")
def command(model, checkpoint, sde_name, data, method, probes, probe, n, bits, dequant_repeats, rtol, atol, eps,
               batch_size, seed, device, threads, out, quiet, class_):
    """Log-likelihood through the probability-flow ODE, in nats and bits/dim.

    Prints mean ± standard error over the data points (and over Hutchinson probes), nfe and time.

    \b
    Examples:
      scoresde likelihood --model oracle:gmm8 --n 128
      scoresde likelihood --checkpoint runs/digits/checkpoint.pt --method hutchinson --probes 4
      scoresde likelihood --model oracle:gmm8 --data points.npy --bits 8
      scoresde likelihood --model diffusers:my_ddpm --data images.npy
    """
    if (model is None) == (checkpoint is None):
        raise CLIError("give exactly one of --model SPEC or --checkpoint FILE")
    check_model_path(model or checkpoint, "--model" if model else "--checkpoint")  # before torch is imported
    import math

    import torch

    from scoresde._io import write_json
    from scoresde.likelihood import EXPECTED_NFE, bits_per_dim_estimate, plan_likelihood

    dev = to_device(device)
    resolved = conditioned(resolve(model or checkpoint, sde_name, dev, "--model" if model else "--checkpoint"),
                           class_, None)
    if resolved.describe and not quiet:
        click.echo(resolved.describe, err=True)
    if data is None and resolved.oracle is None and resolved.data_config is None:
        raise CLIError(f"--data is required for {model}: a .npy/.npz file of samples (uint8 images are dequantized)")
    eps = resolved.sde.likelihood_eps if eps is None else eps
    truth = resolved.oracle if resolved.label is None or resolved.oracle is None else \
        resolved.oracle.conditional(resolved.label)  # log p(x | c) is this mixture's log p(x)
    from scoresde.training.data import data_from_config, make_dataset

    g = torch.Generator().manual_seed(seed)
    levels = 2 ** bits if bits else None
    if data in (None, "model") and resolved.oracle is not None:
        x = truth.sample(n, generator=g, dtype=torch.float64)
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
        elif levels is not None and ds.levels is not None and levels != ds.levels:
            # a wrong offset would shift bits/dim silently (4 bits on the 17-level digits: 3.000, not 3.087)
            raise CLIError(f"--bits {bits} means {levels} levels, but the data {data or 'of the checkpoint'} have "
                           f"{ds.levels} levels (detected); leave --bits out to use them")
    if tuple(x.shape[1:]) != tuple(resolved.shape):
        raise CLIError(f"--data: samples have shape {tuple(x.shape[1:])}, the model expects {tuple(resolved.shape)}")
    # exact oracles run in float64; a network in the precision it was trained in
    x = x.to(dev, torch.float64 if getattr(resolved.score_fn, "oracle", None) is not None else torch.float32)
    # --dequant-repeats only counts for quantized data; continuous data has no dequantization draws
    repeats = dequant_repeats if levels else 1
    with chosen_threads(threads, resolved.score_fn, x[:batch_size], dev, quiet=quiet):
        plan = plan_likelihood(resolved.score_fn, resolved.sde, x, method, repeats=repeats, probes=probes,
                              batch_size=batch_size)
        if not quiet:
            click.echo(f"plan: method {plan.method} ({plan.reason}); {repeats} x {est_solves(plan.n, batch_size)} "
                       f"solve(s) of ~{EXPECTED_NFE} evaluations -> about {duration(plan.estimate_s)}", err=True)
        with SolveProgress(repeats * est_solves(plan.n, batch_size), resolved.sde.T, eps, disable=quiet) as bar:
            t0 = time.perf_counter()
            est = bits_per_dim_estimate(resolved.score_fn, resolved.sde, x, bits=None, levels=levels, repeats=repeats,
                                        method=plan.method, generator=g, rtol=rtol, atol=atol, eps=eps, probes=probes,
                                        probe=probe, batch_size=batch_size, shape=resolved.shape,
                                        callback=bar.solved, on_eval=bar.evaluated)
    wall = time.perf_counter() - t0
    D, logp = est.D, est.logp
    click.echo(f"model {model or checkpoint}  sde {resolved.sde!r}  n={est.n}  D={D}  method={est.method}"
               + (f" ({probes} {probe} probes)" if est.method == "hutchinson" else ""))
    click.echo(f"log p     {est.logp_mean:.4f} ± {est.logp_stderr:.4f} nats per sample   "
               f"({est.logp_mean / D:.4f} nats/dim)")
    click.echo(f"bits/dim  {est.bpd:.4f} ± {est.stderr:.4f}"
               + (f"   (dequantized {levels}-level data, offset log2({levels}) - 1 = {math.log2(levels) - 1:.3f}, "
                  f"{dequant_repeats} draw(s))" if levels else "   (continuous density, no dequantization offset)"))
    if est.probe_stderr is not None:
        click.echo(f"Hutchinson standard error per sample (mean): {est.probe_stderr.mean().item():.4f} nats")
    if resolved.oracle is not None and not levels:
        exact = truth.log_prob(x.double().cpu())
        click.echo(f"exact log p_0 (oracle)  {exact.mean().item():.4f};  mean |ODE − exact| "
                   f"{(logp - exact).abs().mean().item():.2e} nats")
    click.echo(f"nfe {est.nfe}   time {wall:.2f} s")
    if out:
        write_json(out, dict(model=model or checkpoint, method=est.method, n=est.n, D=D, levels=levels,
                             mean_logp=est.logp_mean, stderr=est.logp_stderr, nfe=est.nfe, wall_s=wall,
                             logp=logp.tolist(), bpd=est.bpd_per_sample.tolist(), versions=versions()))


def est_solves(n: int, batch_size: int) -> int:
    """ODE solves per dequantization draw: one per batch of points."""
    return -(-n // batch_size)


class SolveProgress:
    """A bar over the ODE solves that moves during each one: its position is the finished solves
    plus the fraction of [eps, T] the current one has reached, with the evaluations so far beside
    it (a solve of a whole batch can take minutes, so a per-batch count would stand still)."""

    def __init__(self, solves: int, T: float, eps: float, disable: bool = False):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=solves, desc="likelihood", unit="solve", disable=disable, leave=False,
                        bar_format="{l_bar}{bar}| {n:.2f}/{total} solves [{elapsed}<{remaining}{postfix}]")
        self.T, self.eps, self.done, self.reached, self.nfe_done, self.nfe = T, eps, 0, 0.0, 0, 0

    def evaluated(self, t: float, nfe: int) -> None:
        """After each drift evaluation: t reached in the current solve, its nfe so far."""
        # an adaptive solver retries rejected steps at earlier times; show the furthest reached
        self.reached = max(self.reached, min(1.0, (t - self.eps) / (self.T - self.eps)))
        self.nfe = nfe
        self._show()

    def solved(self, k: int) -> None:
        """After each solve (of k points)."""
        self.done, self.nfe_done, self.nfe = self.done + 1, self.nfe_done + self.nfe, 0
        self.reached = 1.0 if self.done >= self.bar.total else 0.0  # the next solve starts at eps
        self._show()

    def _show(self) -> None:
        self.bar.n = min(self.bar.total, self.done + self.reached * (self.done < self.bar.total))
        self.bar.set_postfix_str(f"t={self.eps + self.reached * (self.T - self.eps):.3f}, "
                                 f"nfe {self.nfe_done + self.nfe}", refresh=False)
        self.bar.refresh() if self.bar.n == self.bar.total else self.bar.update(0)  # update(0) is rate-limited

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
        return False

"""`scoresde likelihood`: log-likelihood and bits/dim through the probability-flow ODE, and the two
variational bounds beside it (the reverse SDE's continuous-time ELBO and DDPM's discrete bound)."""
from __future__ import annotations

import time

import click

from scoresde.cli._common import (SDE_CHOICES, SEED, check_model_path, CLIError, conditioned, data_source,
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
@click.option("--estimate", "estimate", default="ode", metavar="ode,elbo,vlb|all", show_default=True,
              help="which numbers to report, comma-separated: ode (log p of the probability-flow ODE model, an "
                   "estimate), elbo (a lower bound on log p of the reverse-SDE model, any SDE), vlb (DDPM's variational "
                   "bound of the N-step chain, VP only); all = ode,elbo,vlb. --method picks the ODE's divergence")
@click.option("--elbo-samples", type=click.IntRange(min=1), default=16, show_default=True,
              help="elbo: Monte Carlo times per data point (each with an antithetic pair of noises)")
@click.option("--t-sampling", type=click.Choice(["logsnr", "uniform"]), default="logsnr", show_default=True,
              help="elbo: draw t uniformly in log-SNR (importance sampling, t ∝ g²/σ²) or uniformly in t; vlb with "
                   "--vlb-terms: draw steps ∝ their log-SNR drop or uniformly")
@click.option("--vlb-variance", type=click.Choice(["beta_tilde", "beta"]), default="beta_tilde", show_default=True,
              help="vlb: reverse-step variance σ² = β̃ (the ddpm solver's default) or β")
@click.option("--vlb-decoder", type=click.Choice(["discretized", "dequantized"]), default="discretized",
              show_default=True,
              help="vlb on discrete data: DDPM's discretized decoder on the integers (a model trained on them), or "
                   "dequantized points with a Gaussian decoder and the +(b-1) offset, like the ODE and the ELBO (a "
                   "model trained on dequantized data, as scoresde train does)")
@click.option("--vlb-terms", type=click.IntRange(min=1), default=None,
              help="vlb: K importance-sampled steps per point (unbiased) instead of the full sum over all N steps "
                   "[default: the full sum]")
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
def command(model, checkpoint, sde_name, data, method, estimate, elbo_samples, t_sampling, vlb_variance, vlb_decoder,
            vlb_terms, probes, probe, n, bits, dequant_repeats, rtol, atol, eps, batch_size, seed, device, threads, out,
            quiet, class_):
    """Log-likelihood through the probability-flow ODE, in nats and bits/dim; with --estimate also
    the continuous-time ELBO and the DDPM variational bound of the same model on the same data.

    Prints mean ± standard error over the data points (and over Hutchinson probes), nfe and time.
    The bounds are lower bounds on log p (upper bounds on bits/dim) of the reverse-SDE model (elbo)
    and of the N-step DDPM chain (vlb); with the exact score the ODE and the ELBO agree in the mean.

    \b
    Examples:
      scoresde likelihood --model oracle:gmm8 --n 128
      scoresde likelihood --checkpoint runs/digits/checkpoint.pt --method hutchinson --probes 4
      scoresde likelihood --model oracle:gmm8 --data points.npy --bits 8
      scoresde likelihood --checkpoint runs/digits/checkpoint.pt --estimate all
      scoresde likelihood --model diffusers:my_ddpm --data images.npy --estimate all
    """
    if (model is None) == (checkpoint is None):
        raise CLIError("give exactly one of --model SPEC or --checkpoint FILE")
    check_model_path(model or checkpoint, "--model" if model else "--checkpoint")  # before torch is imported
    chosen = parse_estimates(estimate)
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
    if "vlb" in chosen:  # refused before any data are read or solves run
        from scoresde.bounds import discrete_schedule
        try:
            discrete_schedule(resolved.sde)
        except ValueError as e:
            raise CLIError(f"--estimate vlb: {e}") from None
    truth = resolved.truth  # for a class: log p(x | c) is this mixture's log p(x)
    from scoresde.training.data import data_from_config

    g = torch.Generator().manual_seed(seed)
    levels = 2 ** bits if bits else None
    if data in (None, "model") and resolved.oracle is not None:
        x = truth.sample(n, generator=g, dtype=torch.float64)
    elif data == "model":
        raise CLIError("--data model needs an oracle; pass a data set name or a .npy/.npz file")
    else:
        if data is None:  # a checkpoint's own held-out split (digits, cifar10, data.holdout); toys draw afresh
            try:
                ds = data_from_config(resolved.data_config, "test")
            except ValueError as e:
                raise CLIError(f"--data: {e}; or pass --data FILE.npy") from None
        else:
            ds = data_source(data, "--data")
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
    x = x.to(dev, resolved.dtype)
    # --dequant-repeats only counts for quantized data; continuous data has no dequantization draws
    repeats = dequant_repeats if levels else 1
    bound_args = dict(chosen=chosen, resolved=resolved, truth=truth, x=x, levels=levels, repeats=repeats, eps=eps, g=g,
                      elbo_samples=elbo_samples, t_sampling=t_sampling, vlb_variance=vlb_variance, vlb_terms=vlb_terms,
                      vlb_decoder=vlb_decoder,
                      batch_size=batch_size, threads=threads, dev=dev, quiet=quiet)
    if "ode" not in chosen:
        extra = report_bounds(**bound_args)
        if out:
            write_json(out, dict(model=model or checkpoint, n=x.shape[0], D=x[0].numel(), levels=levels, **extra,
                                 versions=versions()))
        return
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
    extra = report_bounds(**bound_args, ode=(est, wall)) if len(chosen) > 1 else {}
    if out:
        write_json(out, dict(model=model or checkpoint, method=est.method, n=est.n, D=D, levels=levels,
                             mean_logp=est.logp_mean, stderr=est.logp_stderr, nfe=est.nfe, wall_s=wall,
                             logp=logp.tolist(), bpd=est.bpd_per_sample.tolist(), **extra, versions=versions()))


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


ESTIMATE_NAMES = ("ode", "elbo", "vlb")


def parse_estimates(value: str) -> list[str]:
    """--estimate as the list of names in report order (ode, elbo, vlb); 'all' is all three."""
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise CLIError("--estimate is empty; give ode, elbo, vlb (comma-separated) or all")
    for v in items:
        if v not in ESTIMATE_NAMES + ("all",):
            raise CLIError(f"--estimate: unknown value {v!r}; choose from: ode, elbo, vlb, all")
    return [e for e in ESTIMATE_NAMES if e in items or "all" in items]


def report_bounds(chosen, resolved, truth, x, levels, repeats, eps, g, elbo_samples, t_sampling, vlb_variance, vlb_terms,
                  vlb_decoder, batch_size, threads, dev, quiet, ode=None) -> dict:
    """Compute and print the requested bounds (and a summary beside the ODE's number when given as
    (BitsPerDimResult, seconds)); returns {'estimates': {name: summary}} for --out."""
    import math

    import torch

    from scoresde.bounds import continuous_elbo, ddpm_vlb

    rows = []
    if ode is not None:
        est, wall = ode
        rows.append(("ode", est.bpd, est.stderr, est.logp_mean, est.logp_stderr, est.nfe, wall,
                     f"log p_eps of the probability-flow ODE model (an estimate, not a bound; {est.method} divergence)"))
    results = {}
    with chosen_threads(threads, resolved.score_fn, x[:batch_size], dev, quiet=True):
        if "elbo" in chosen:
            results["elbo"] = continuous_elbo(resolved.score_fn, resolved.sde, x, levels=levels, repeats=repeats,
                                              eps=eps, samples=elbo_samples, t_sampling=t_sampling, generator=g,
                                              batch_size=batch_size)
        if "vlb" in chosen:
            xv = x
            if levels and vlb_decoder == "discretized":  # it scores the integers: the cell each point lies in
                cell = 1.0 / (levels - 1)
                if float(x.abs().max()) > 1 + cell:
                    raise CLIError(f"--estimate vlb with {levels}-level data needs values in [-1, 1]; the data reach "
                                   f"{float(x.abs().max()):.3g}")
                xv = 2 * torch.round((x.clamp(-1, 1) + 1) / 2 * (levels - 1)) / (levels - 1) - 1
            results["vlb"] = ddpm_vlb(resolved.score_fn, resolved.sde, xv, levels=levels, variance=vlb_variance,
                                      terms=vlb_terms, t_sampling=t_sampling, decoder=vlb_decoder,
                                      repeats=repeats if levels and vlb_decoder == "dequantized" else 1,
                                      generator=g, batch_size=batch_size)
    exact = None
    if truth is not None and not levels:
        exact = truth.log_prob(x.double().cpu())
    for name, r in results.items():
        click.echo(f"{name:<5} bits/dim  {r.bpd:.4f} ± {r.stderr:.4f}   log p >= {r.logp_mean:.4f} ± {r.logp_stderr:.4f} "
                   f"nats per sample   nfe {r.nfe} ({r.evals} point evaluations)   time {r.seconds:.2f} s")
        click.echo(f"      {r.what}")
        if exact is not None:
            gap = exact - r.logp
            click.echo(f"      exact log p_0 (oracle) − bound: {gap.mean().item():.4f} ± "
                       f"{gap.std().item() / math.sqrt(len(gap)):.4f} nats")
        rows.append((name, r.bpd, r.stderr, r.logp_mean, r.logp_stderr, r.nfe, r.seconds, r.what.split(";")[0]))
    if len(rows) > 1:
        click.echo(f"{'':5} {'bits/dim':>18}  {'nfe':>7}  {'time':>8}  what")
        for name, bpd, se, _, _, nfe, sec, what in rows:
            click.echo(f"{name:<5} {bpd:>9.4f} ± {se:<6.4f}  {nfe:>7}  {sec:>6.2f} s  {what}")
    return {"estimates": {name: dict(bpd=r.bpd, stderr=r.stderr, mean_logp=r.logp_mean, logp_stderr=r.logp_stderr,
                                     nfe=r.nfe, evals=r.evals, wall_s=r.seconds, what=r.what, details=r.details,
                                     logp=r.logp.tolist())
                          for name, r in results.items()}}

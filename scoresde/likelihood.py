"""Log-likelihood through the probability-flow ODE (Song et al. 2021, Appendix D.2).

With F(x, t) = f(x, t) − ½g(t)²·s(x, t) the probability-flow drift,

    log p_eps(x) = log p_T(x_T) + ∫_eps^T ∇·F(x_t, t) dt,

where x_t solves dx/dt = F from x_eps = x.  The augmented state [x, Δ] is integrated forward
from eps to T with torchdiffeq (adaptive dopri5 by default) and log p_T is the prior's.
The divergence is exact (autograd, all D rows of the Jacobian in one batched call) or
Hutchinson's vᵀ(∂F/∂x)v with one probe v per solve, drawn once and kept fixed so the
adaptive solver sees a smooth integrand (the estimate stays unbiased).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torchdiffeq import odeint

from scoresde import _rng
from scoresde._checks import bcast
from scoresde._ode import ADAPTIVE, inside_interval


@dataclass
class LikelihoodResult:
    """logp: log p(x) in nats, shape (B,); nfe: drift evaluations; stderr: standard error of
    logp over Hutchinson probes (None for the exact trace); prior_logp and delta_logp: the
    two terms of the sum; bpd: bits/dim when asked for via bits_per_dim()."""

    logp: torch.Tensor
    nfe: int
    stderr: torch.Tensor | None = None
    prior_logp: torch.Tensor | None = None
    delta_logp: torch.Tensor | None = None


def _divergence_exact(F: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """tr(∂F/∂x) per sample: the D Jacobian rows come from one batched vector-Jacobian call."""
    B, D = x.shape[0], x[0].numel()
    basis = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, 1, *x.shape[1:]).expand(D, *x.shape)
    try:
        rows = torch.autograd.grad(F, x, basis, is_grads_batched=True)[0]  # (D, B, ...)
    except RuntimeError:  # a score function vmap cannot batch: one row at a time
        rows = torch.stack([torch.autograd.grad(F, x, basis[i], retain_graph=True)[0] for i in range(D)])
    return torch.diagonal(rows.reshape(D, B, D), dim1=0, dim2=2).sum(-1)


def _divergence_hutchinson(F: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """vᵀ(∂F/∂x)v per sample."""
    vjp = torch.autograd.grad(F, x, v)[0]
    return (vjp * v).flatten(1).sum(1)


def log_likelihood(score_fn: Callable, sde, x: torch.Tensor, method: str = "exact", *, rtol: float = 1e-5,
                   atol: float = 1e-5, eps: float | None = None, probes: int = 1, probe: str = "rademacher",
                   generator: torch.Generator | None = None, ode_method: str = "dopri5",
                   batch_size: int | None = None, shape: tuple | None = None, dtype: torch.dtype | None = None,
                   callback: Callable | None = None, on_eval: Callable | None = None) -> LikelihoodResult:
    """log p(x) in nats per sample via the probability-flow ODE.

    method: 'exact' (autograd trace, best for small D) or 'hutchinson' (probes fixed probes
    per sample, each its own solve; stderr = std over probes / √probes); probe: 'rademacher'
    or 'gaussian'; eps: start time (default sde.likelihood_eps = 1e-5); batch_size bounds
    memory (samples are processed in chunks); shape: expected per-sample shape, checked;
    callback(k) after each chunk of k samples; on_eval(t, nfe) after every drift evaluation of
    the chunk being solved (t: the time reached, in [eps, T]; nfe: evaluations so far in this
    chunk), so a progress display moves during a solve, not only between chunks.
    """
    if method not in ("exact", "hutchinson"):
        raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(f"x must be a tensor of shape (B, ...), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"x must have shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.flatten(1))).any(1).nonzero()[0])
        raise ValueError(f"x contains NaN or inf (first at sample {bad})")
    eps = sde.likelihood_eps if eps is None else float(eps)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    x = x.to(dtype) if dtype is not None else x
    P = probes if method == "hutchinson" else 1
    n = x.shape[0]
    chunk = batch_size or n
    priors, deltas, nfe = [], [], 0
    for start in range(0, n, chunk):
        xb = x[start:start + chunk]
        xb = xb.repeat(P, *([1] * (xb.ndim - 1))) if P > 1 else xb
        v = None
        if method == "hutchinson":
            v = _rng.randn(xb.shape, generator, xb.dtype, xb.device)
            if probe == "rademacher":
                v = torch.sign(v) + (v == 0)
        prior, delta, k = _solve(score_fn, sde, xb, eps, v, rtol, atol, ode_method, on_eval)
        nfe += k
        priors.append(prior.reshape(P, -1))
        deltas.append(delta.reshape(P, -1))
        if callback is not None:
            callback(xb.shape[0] // P)
    prior, delta = torch.cat(priors, 1), torch.cat(deltas, 1)
    lp = prior + delta  # (P, n)
    stderr = lp.std(0) / math.sqrt(P) if P > 1 else None
    return LikelihoodResult(logp=lp.mean(0), nfe=nfe, stderr=stderr, prior_logp=prior.mean(0),
                            delta_logp=delta.mean(0))


def _drift_and_divergence(score_fn, sde, xt, t, v):
    """The probability-flow drift F(x, t) and its divergence (exact when v is None, else vᵀ∂F/∂x v)."""
    tb = t.to(xt.dtype).expand(xt.shape[0])
    with torch.enable_grad():
        xt = xt.detach().requires_grad_(True)
        s = score_fn(xt, tb)
        if s.shape != xt.shape:
            raise ValueError(f"score_fn returned shape {tuple(s.shape)}, expected {tuple(xt.shape)}")
        F = bcast(sde.drift_coef(tb), xt) * xt - bcast(0.5 * sde.g2(tb), xt) * s
        div = _divergence_exact(F, xt) if v is None else _divergence_hutchinson(F, xt, v)
    if not bool(torch.isfinite(F).all()):
        raise ValueError(f"the probability-flow drift is NaN/inf at t={float(t):.6g}; check the model, "
                         f"or use float64")
    return F.detach(), div.detach()


def _solve(score_fn, sde, x, eps, v, rtol, atol, ode_method, on_eval=None):
    state = {"nfe": 0, "t": eps}

    def dynamics(t, y):
        state["nfe"] += 1
        state["t"] = float(t)
        out = _drift_and_divergence(score_fn, sde, y[0], t, v)
        if on_eval is not None:
            on_eval(state["t"], state["nfe"])
        return out

    ts = torch.tensor([eps, sde.T], dtype=torch.float64, device=x.device)
    y0 = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    try:
        xs, deltas = odeint(dynamics, y0, ts, rtol=rtol, atol=atol, method=ode_method,
                            options=inside_interval(ts) if ode_method in ADAPTIVE else None)
    except AssertionError as err:  # torchdiffeq's step-size underflow
        raise ValueError(f"the likelihood ODE solve failed at t={state['t']:.6g} ({err}); raise rtol/atol "
                         f"(now {rtol}/{atol}) or eps (now {eps})") from None
    xT = xs[-1]
    return sde.prior_logp(xT), deltas[-1], state["nfe"]


# A dopri5 solve at the default tolerances (1e-5) took about 120 drift evaluations on the ring
# oracle and about 430 on a digits network; the cost model takes the high end, so the estimate
# errs long and the exact trace is not chosen on an optimistic guess.
EXPECTED_NFE = 400
# The default method takes the exact trace (no probe noise) only while its modelled time stays
# within this; past it, Hutchinson with one probe, which costs 1/D as much per evaluation.
EXACT_BUDGET_S = 60.0


@dataclass
class LikelihoodPlan:
    """What a likelihood run will cost, before it starts.  sec_per_pass: measured seconds of one
    drift evaluation with one vector-Jacobian product, per sample; the exact trace needs D of them
    per evaluation, Hutchinson one per probe.  estimate_s and exact_s: modelled seconds of the
    chosen method and of the exact trace (n × repeats × passes × EXPECTED_NFE × sec_per_pass)."""

    method: str
    D: int
    n: int
    sec_per_pass: float
    estimate_s: float
    exact_s: float
    reason: str


def plan_likelihood(score_fn, sde, x: torch.Tensor, method: str | None = None, *, repeats: int = 1,
                    probes: int = 1, budget_s: float = EXACT_BUDGET_S, batch_size: int | None = None) -> LikelihoodPlan:
    """Time one drift evaluation with one vector-Jacobian product on the first batch_size points
    of x (the batch the solves will use; default all) and model the run's cost from it.  method None chooses: 'exact' when the exact trace's
    modelled time fits budget_s, else 'hutchinson' (with `probes` probes)."""
    n, D = x.shape[0], x[0].numel()
    xb = x[:batch_size or n]
    v = torch.ones_like(xb)
    t = torch.tensor(0.5 * sde.T, dtype=torch.float64, device=x.device)
    times = []
    for _ in range(2):  # the first call pays for lazy initialisation; keep the faster
        t0 = time.perf_counter()
        _drift_and_divergence(score_fn, sde, xb, t, v)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        times.append(time.perf_counter() - t0)
    per = min(times) / xb.shape[0]
    cost = n * repeats * EXPECTED_NFE * per
    exact_s, hutch_s = cost * D, cost * probes
    if method is None:
        method = "exact" if exact_s <= budget_s else "hutchinson"
        reason = (f"the exact trace ({D} vector-Jacobian products per evaluation) is modelled at "
                  f"{exact_s:.3g} s, {'within' if method == 'exact' else 'over'} the {budget_s:g} s budget")
    else:
        reason = "as asked"
    return LikelihoodPlan(method, D, n, per, exact_s if method == "exact" else hutch_s, exact_s, reason)


def dequantize(x: torch.Tensor, bits: int = 8, generator: torch.Generator | None = None,
               levels: int | None = None) -> torch.Tensor:
    """Uniform dequantization of data on [−1, 1] that was made from integers k ∈ {0 … L − 1},
    L = 2^b (or `levels`), as x = 2k/(L − 1) − 1: returns 2(k + u)/L − 1 with u ~ U[0, 1)^D, so
    each integer owns a cell of width 2/L in [−1, 1)."""
    levels = levels or 2 ** bits
    k = torch.round((x + 1) / 2 * (levels - 1))
    u = _rng.rand(x.shape, generator, x.dtype, x.device)
    return 2 * (k + u) / levels - 1


def bits_per_dim(logp: torch.Tensor, D: int, bits: float = 8, levels: int | None = None) -> torch.Tensor:
    """bpd = −log p(x)/(D ln 2) + (b − 1) for a density on [−1, 1]^D of dequantized b-bit data.

    Where the offset comes from: a cell of the b-bit grid has width 2^−b in [0, 1] coordinates,
    so log P(k) ≈ log p_[0,1](y) − D·b·ln 2; mapping [0, 1] to [−1, 1] (x = 2y − 1) multiplies the
    density by 2^−D, so log p_[0,1](y) = log p(x) + D ln 2.  Hence
    −log₂P(k)/D = −log p(x)/(D ln 2) − 1 + b.  For 8-bit data that is score_sde's "+ 7"; data
    scaled to [0, 1] would give + 8.  Without dequantization the density of discrete points is
    unbounded, which is how negative bits/dim appear.  For L levels that are not a power of two
    (the 17-level digits) b = log₂ L."""
    if levels is not None:
        bits = math.log2(levels)
    return -logp / (D * math.log(2)) + (bits - 1)


def standard_error(v: torch.Tensor) -> float:
    """Standard error of the mean of per-sample values: std(v)/√n (nan for n = 1)."""
    return v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")


class LogpSummary:
    """logp_mean and logp_stderr (nats, over the data points) of a result with per-sample `logp`."""

    @property
    def logp_mean(self) -> float:
        return self.logp.mean().item()

    @property
    def logp_stderr(self) -> float:
        """Standard error of the mean log p over the data points, nats (nan for n = 1)."""
        return standard_error(self.logp)


@dataclass
class BitsPerDimResult(LogpSummary):
    """bpd: mean bits/dim over the n samples; stderr: its standard error over the samples (nan
    for n = 1); logp: (n,) nats per sample, averaged over the dequantization repeats;
    bpd_per_sample: (n,); probe_stderr: Hutchinson's per-sample standard error in nats, one row
    per repeat (None for the exact trace); nfe: drift evaluations over all repeats; levels:
    the data's quantization levels (None: a continuous density, no dequantization)."""

    bpd: float
    stderr: float
    logp: torch.Tensor
    bpd_per_sample: torch.Tensor
    nfe: int
    n: int
    D: int
    method: str
    levels: int | None = None
    repeats: int = 1
    probe_stderr: torch.Tensor | None = None



def resolve_levels(bits: float | None, levels: int | None) -> int | None:
    """The number of data levels L: `levels` when given (an integer >= 2), else round(2^bits)
    for bits in [1, 16], else None (continuous data)."""
    if levels is not None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
        return levels
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be a number in [1, 16] (or None for continuous data), got {bits!r}")
    return round(2 ** bits)


def bits_per_dim_estimate(score_fn: Callable, sde, x: torch.Tensor, bits: float | None = 8, *,
                          levels: int | None = None, repeats: int = 1, method: str | None = None,
                          generator: torch.Generator | None = None, callback: Callable | None = None,
                          **likelihood_options) -> BitsPerDimResult:
    """Bits/dim of b-bit data on [−1, 1] under the model, with uniform dequantization.

    For each of `repeats` draws u ~ U[0, 1)^D the points are dequantized (see dequantize) and
    log p is computed through the probability-flow ODE (log_likelihood); per sample the repeats
    are averaged, logp_i = (1/R) Σ_r log p(x̃_i,r), and

        bpd_i = −logp_i/(D ln 2) + (b − 1),    bpd = (1/n) Σ_i bpd_i,    stderr = std_i(bpd_i)/√n,

    the offset b − 1 coming from the cell width and the [0, 1] → [−1, 1] map (see bits_per_dim);
    b = log₂ levels when `levels` is given.  bits=None (and no levels) treats x as continuous:
    no dequantization, no offset, and repeats must be 1.  method: 'exact' or 'hutchinson'
    (default: chosen by plan_likelihood's cost model: exact while its modelled time fits
    EXACT_BUDGET_S); other options (rtol, atol, eps, probes,
    probe, batch_size, shape, ...) go to log_likelihood.  The draws come from `generator` in a
    fixed order (per repeat: the dequantization noise, then the probes), so a seed gives the
    same figure every time; callback(k) counts samples across all repeats.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    levels = resolve_levels(bits, levels)
    if levels is None and repeats > 1:
        raise ValueError(f"repeats={repeats} averages over dequantization draws; continuous data (bits=None) "
                         f"has none, so use repeats=1")
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(f"x must be a tensor of shape (B, ...), got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    D = x[0].numel()
    if method is None:
        method = plan_likelihood(score_fn, sde, x, repeats=repeats, probes=likelihood_options.get("probes", 1),
                                 batch_size=likelihood_options.get("batch_size")).method
    per_rep, nfe, probe_se = [], 0, []
    for _ in range(repeats):
        xin = dequantize(x, levels=levels, generator=generator) if levels else x
        res = log_likelihood(score_fn, sde, xin, method=method, generator=generator, callback=callback,
                             **likelihood_options)
        per_rep.append(res.logp.double().cpu())
        nfe += res.nfe
        if res.stderr is not None:
            probe_se.append(res.stderr.double().cpu())
    logp = torch.stack(per_rep).mean(0)
    bpd = bits_per_dim(logp, D, levels=levels) if levels else -logp / (D * math.log(2))
    return BitsPerDimResult(bpd=bpd.mean().item(), stderr=standard_error(bpd), logp=logp, bpd_per_sample=bpd, nfe=nfe,
                            n=len(logp), D=D, method=method, levels=levels, repeats=repeats,
                            probe_stderr=torch.stack(probe_se) if probe_se else None)

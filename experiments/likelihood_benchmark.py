"""Likelihood accuracy and cost.
(1) |error| in nats/dim vs nfe for rtol = atol ∈ {1e-3, 1e-4, 1e-5} on the 64-D anisotropic
    Gaussian oracle, VP and VE; the error is against the exact answer the ODE should give
    (the closed-form log p_eps with the prior mismatch at T removed) and against log N(x; μ, Σ).
(2) wall time of the exact trace vs one Hutchinson probe for D ∈ {2, 16, 64, 256}.
(3) bits/dim of a trained digits model, if runs/digits_vp/checkpoint.pt exists.
    python experiments/likelihood_benchmark.py"""
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde import VESDE, VPSDE  # noqa: E402
from scoresde._io import write_text  # noqa: E402
from scoresde.likelihood import bits_per_dim, dequantize, log_likelihood  # noqa: E402
from scoresde.oracle import GaussianMixture  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def accuracy(n=64, D=64):
    rows = []
    data = GaussianMixture.gaussian(D)
    x = data.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sde in (VPSDE(), VESDE()):
        eps = 1e-5
        xT = data.flow(x, eps, sde.T, sde)
        target = data.log_prob_t(x, eps, sde) - data.log_prob_t(xT, sde.T, sde) + sde.prior_logp(xT)
        for tol in (1e-3, 1e-4, 1e-5):
            t0 = time.perf_counter()
            out = log_likelihood(data.score_fn(sde), sde, x, rtol=tol, atol=tol, eps=eps)
            rows.append({"sde": type(sde).__name__, "rtol": tol, "nfe": out.nfe,
                         "solver_err": ((out.logp - target).abs() / D).mean().item(),
                         "err_vs_true": ((out.logp - data.log_prob(x)).abs() / D).mean().item(),
                         "wall_s": time.perf_counter() - t0})
    return rows


def trace_cost(n=64):
    rows = []
    sde = VPSDE()
    for D in (2, 16, 64, 256):
        data = GaussianMixture.gaussian(D)
        x = data.sample(n, generator=torch.Generator().manual_seed(0))
        row = {"D": D}
        for method in ("exact", "hutchinson"):
            t0 = time.perf_counter()
            out = log_likelihood(data.score_fn(sde), sde, x, method=method, rtol=1e-4, atol=1e-4,
                                 generator=torch.Generator().manual_seed(1))
            row[f"{method}_s"], row[f"{method}_nfe"] = time.perf_counter() - t0, out.nfe
        row["ratio"] = row["exact_s"] / row["hutchinson_s"]
        rows.append(row)
    return rows


def digits_bpd(n=200, repeats=3):
    ck = os.path.join(ROOT, "runs", "digits_vp", "checkpoint.pt")
    if not os.path.exists(ck):
        return None
    from scoresde.training.checkpoint import load_score_model
    from scoresde.training.data import digits

    model = load_score_model(ck)
    ds = digits("test")  # held out: the model never saw these 200
    g = torch.Generator().manual_seed(0)
    x = ds.table[:n]
    per, t0, nfe = [], time.perf_counter(), 0
    for _ in range(repeats):
        out = log_likelihood(model.score_fn, model.sde, dequantize(x, levels=17, generator=g), rtol=1e-4, atol=1e-4,
                             method="hutchinson", generator=g, batch_size=256)
        per.append(bits_per_dim(out.logp, 64, levels=17))
        nfe += out.nfe
    bpd = torch.stack(per).mean(0)
    return {"n": x.shape[0], "repeats": repeats, "bpd": bpd.mean().item(), "se": bpd.std().item() / math.sqrt(n),
            "nfe": nfe, "wall_s": time.perf_counter() - t0, "step": model.step}


def main():
    acc, cost = accuracy(), trace_cost()
    parts = [f"# Likelihood benchmark\n\nMachine: {machine()}.\n",
             "## Accuracy vs nfe, 64-D anisotropic Gaussian, 64 points, dopri5\n",
             "solver_err: mean |ODE − exact ODE answer| (prior mismatch removed) in nats/dim; "
             "err_vs_true: mean |ODE − log N(x; μ, Σ)| in nats/dim (includes the prior mismatch at T and, "
             "for VE, the σ_min blur).\n",
             markdown_table(acc, ["sde", "rtol", "nfe", "solver_err", "err_vs_true", "wall_s"],
                            {"solver_err": "{:.2e}", "err_vs_true": "{:.2e}", "wall_s": "{:.2f}"}),
             "\n## Exact trace vs one Hutchinson probe (VP, 64 points, rtol = atol = 1e-4)\n",
             markdown_table(cost, ["D", "exact_s", "exact_nfe", "hutchinson_s", "hutchinson_nfe", "ratio"],
                            {"exact_s": "{:.2f}", "hutchinson_s": "{:.2f}", "ratio": "{:.1f}"})]
    d = digits_bpd()
    if d:
        parts += ["\n## Trained digits model (configs/digits_vp.toml)\n",
                  f"bits/dim {d['bpd']:.3f} ± {d['se']:.3f} (17-level data, offset log2(17) − 1, "
                  f"{d['repeats']} dequantization draws × {d['n']} held-out test digits, Hutchinson, rtol 1e-4; "
                  f"checkpoint step {d['step']}; {d['nfe']} nfe, {d['wall_s']:.0f} s)"]
    write_text(out_path("likelihood_benchmark.md"), "\n".join(parts) + "\n")
    print("\n".join(parts))


if __name__ == "__main__":
    main()

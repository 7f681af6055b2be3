"""DEIS's two interpolants of ε̂ against each other and against diffusers' DEIS on the same grid.

Float64, the 4-D Gaussian oracle's closed-form probability flow from T to eps (max |Δx| over 64
prior draws), VP and VE, orders 2 and 3, the log-SNR and edm grids, K = 20, 40, 80, 160; the slope
is that of log error against log K.  diffusers' DEISMultistepScheduler (the `bench` extra) is run
on our grid by handing it our σ̃ table in float64 (its update reads only `sigmas`), so it is
diffusers' own code on the same x_T, grid and model; without diffusers that column is skipped.
Also the ring oracle at 5, 10, 20 steps against its converged ODE (pf_ode, rtol = atol = 1e-7),
and dpmpp_3m(match_anchors=True) against diffusers' DPMSolverMultistepScheduler(solver_order=3)
with solver_type "heun" and "midpoint" on the same log-SNR grid (final_sigmas_type="sigma_min":
its default "zero" always takes a first-order last step), max |Δx| over 256 ring draws.

    python experiments/deis_interpolant.py
"""
import importlib
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import solvers  # noqa: E402
from _util import machine, markdown_table, out_path, ring_reference  # noqa: E402
from scoresde._io import write_text  # noqa: E402
from scoresde.evaluation.metrics import path_error  # noqa: E402
from scoresde.oracle import GaussianMixture  # noqa: E402
from scoresde.sde import make_sde  # noqa: E402

KS = (20, 40, 80, 160)


def diffusers_on_grid(sch, score_fn, sde, x_T, ts):
    """A diffusers multistep scheduler's own update on our grid ts: its σ table replaced by our
    σ̃(t_i) (float64; its update reads only `sigmas`), the model our ε̂ at t_i."""
    m, s = sde.marginal(ts)
    sig = s / m
    sch.set_timesteps(len(ts) - 1)
    sch.sigmas = sig.clone()
    sch.timesteps = torch.arange(len(ts) - 1, 0, -1)
    x = x_T / m[0] / math.sqrt(1 + float(sig[0]) ** 2)  # diffusers' VP-scaled sample
    for i, tau in enumerate(sch.timesteps):
        x_ours = x * math.sqrt(1 + float(sig[i]) ** 2) * float(m[i])
        eps = -float(s[i]) * score_fn(x_ours, torch.full((x.shape[0],), float(ts[i]), dtype=x.dtype))
        x = sch.step(eps, tau, x).prev_sample
    return x * math.sqrt(1 + float(sig[-1]) ** 2) * float(m[-1])


def main():
    try:
        df = importlib.import_module("diffusers")
    except ImportError:
        df = None
        print("diffusers is not installed: its column is skipped (pip install -e '.[bench]')")
    torch.set_num_threads(1)
    data = GaussianMixture.gaussian(4)
    rows = []
    for sde_name in ("vp", "ve"):
        sde = make_sde(sde_name)
        score = data.score_fn(sde)
        xT = sde.prior_sample((64, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        eps = sde.default_eps
        truth = data.flow(xT, sde.T, eps, sde)
        for grid in ("logsnr", "edm"):
            for order in (2, 3):
                errs = {"log_sigma": [], "sigma": [], "diffusers": []}
                for K in KS:
                    for form in ("log_sigma", "sigma"):
                        res = solvers.sample(score, sde, x_T=xT, solver="deis", steps=K, grid=grid, eps=eps,
                                             order=order, interpolant=form)
                        errs[form].append(float((res.x - truth).abs().max()))
                    if df is not None:
                        x = diffusers_on_grid(df.DEISMultistepScheduler(solver_order=order), score, sde, xT,
                                              res.t_grid)
                        errs["diffusers"].append(float((x - truth).abs().max()))
                row = dict(SDE=sde_name, grid=grid, order=order)
                for form, e in errs.items():
                    if e:
                        slope = -np.polyfit(np.log(KS), np.log(e), 1)[0]
                        row[form] = f"{e[0]:.2e} → {e[-1]:.2e} (slope {slope:.2f})"
                rows.append(row)
                print(row, flush=True)
    ring_rows = []
    for sde_name in ("vp", "subvp", "ve"):
        sde, score, xT, ref = ring_reference(sde_name)
        for grid in ("logsnr", "edm", "quadratic"):
            for order in (2, 3):
                row = dict(SDE=sde_name, grid=grid, order=order)
                for K in (5, 10, 20):
                    for form in ("log_sigma", "sigma"):
                        x = solvers.sample(score, sde, x_T=xT, solver="deis", steps=K, grid=grid, order=order,
                                           interpolant=form).x
                        row[f"K={K} {form}"] = f"{path_error(x, ref):.4f}"
                ring_rows.append(row)
    m3_rows = []
    if df is not None:
        for sde_name in ("vp", "ve"):
            sde = make_sde(sde_name)
            score = GaussianMixture.ring().score_fn(sde)
            xT = sde.prior_sample((256, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            for K in (10, 16):
                res = solvers.sample(score, sde, x_T=xT, solver="dpmpp_3m", steps=K, grid="logsnr", match_anchors=True)
                row = dict(SDE=sde_name, K=K)
                for st in ("heun", "midpoint"):
                    sch = df.DPMSolverMultistepScheduler(solver_order=3, solver_type=st, algorithm_type="dpmsolver++",
                                                         final_sigmas_type="sigma_min")
                    x = diffusers_on_grid(sch, score, sde, xT, res.t_grid)
                    row[f"solver_type={st}"] = f"{float((x - res.x).abs().max()):.1e}"
                m3_rows.append(row)
    md = ["# DEIS: ε̂ interpolated in log σ̃ or in σ̃", "", f"Machine: {machine()}.", "",
          "Gaussian oracle, closed-form flow, max |Δx| at K = 20 → 160:", "", markdown_table(rows, list(rows[0])), "",
          "Ring oracle, RMS ‖x − x_ref‖/√D over 512 draws against pf_ode at rtol = atol = 1e-7:", "",
          markdown_table(ring_rows, list(ring_rows[0]))]
    if m3_rows:
        md += ["", "dpmpp_3m(match_anchors=True) against diffusers' DPM-Solver++(3M), max |Δx|:", "",
               markdown_table(m3_rows, list(m3_rows[0]))]
    write_text(out_path("deis_interpolant.md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

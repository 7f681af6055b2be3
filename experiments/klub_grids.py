"""Do grids fitted to the KL upper bound (objective="klub", Align Your Steps) help stochastic samplers?

The 8-mode ring oracle (GaussianMixture.ring(8, 4.0, 0.2)) with its exact score on the VP SDE.
For each stochastic solver and step count, the grids compared are
  default        the solver's default grid (solvers.default_grid) and end time
  best named     the named grid with the best quality on the tuning seed
  klub@B         solvers.optimize_grid(objective="klub", data=ring.sample, max_evals=B), fitted on
                 data draws of seed 0 (no x_T, no solver noise); "full" is the default budget
Quality: within-mode W2 + off-mode fraction (anchor_comparison.quality; exact samples ≈ 0.03),
mean ± standard error over the evaluation seeds, each a fresh x_T and fresh solver noise that
nothing was tuned or fitted on.  The held-out KLUB (fresh data draws) is reported beside it.

    python experiments/klub_grids.py [--solvers ddpm,euler_maruyama,dpmpp_2m_sde] [--steps 10,20]
        [--budgets 30,100,300,full] [--n 4000] [--eval-seeds 11,12,13]

Writes results/klub_grids.md and .csv.
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import solvers  # noqa: E402
from _util import machine, markdown_table, out_path  # noqa: E402
from anchor_comparison import quality  # noqa: E402
from scoresde import VPSDE  # noqa: E402
from scoresde._io import write_csv, write_text  # noqa: E402
from scoresde.oracle import GaussianMixture  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solvers", default="ddpm,euler_maruyama,dpmpp_2m_sde")
    ap.add_argument("--steps", default="10,20")
    ap.add_argument("--budgets", default="30,100,300,full")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--tune-seed", type=int, default=0)
    ap.add_argument("--eval-seeds", default="11,12,13")
    args = ap.parse_args()
    eval_seeds = [int(s) for s in args.eval_seeds.split(",")]
    if args.tune_seed in eval_seeds:
        ap.error("--tune-seed must not be one of --eval-seeds")
    torch.set_num_threads(1)
    sde, data = VPSDE(), GaussianMixture.ring(8, 4.0, 0.2)
    score = data.score_fn(sde)
    x_T = {s: sde.prior_sample((args.n, 2), generator=torch.Generator().manual_seed(s), dtype=torch.float64)
           for s in [args.tune_seed] + eval_seeds}

    def measure(solver, seeds, **grid):
        qs = [quality(solvers.sample(score, sde, x_T=x_T[s], solver=solver, generator=torch.Generator().manual_seed(s),
                                     **grid).x, data) for s in seeds]
        mean = sum(qs) / len(qs)
        se = math.sqrt(sum((q - mean) ** 2 for q in qs) / (len(qs) - 1) / len(qs)) if len(qs) > 1 else math.nan
        return mean, se

    rows = []
    for solver in args.solvers.split(","):
        for K in [int(k) for k in args.steps.split(",")]:
            dflt = solvers.default_grid(solver, sde)
            named = {}
            for g in solvers.GRIDS:
                try:
                    named[g] = measure(solver, [args.tune_seed], steps=K, grid=g)[0]
                except solvers.SolverError:  # edm / logsnr cannot end at σ = 0 (ddpm)
                    pass
            best = min(named, key=named.get)
            klubs = None
            for label, g in (("default", dflt), ("best named", best)):
                q, se = measure(solver, eval_seeds, steps=K, grid=g)
                rows.append(dict(solver=solver, steps=K, grid=f"{label} ({g})", quality=q, se=se, fit_s=""))
            for b in args.budgets.split(","):
                t0 = time.perf_counter()
                fit = solvers.optimize_grid(score, sde, solver=solver, nfe=K, shape=(2,), objective="klub",
                                            data=data.sample, seed=0, max_evals=None if b == "full" else int(b))
                wall = time.perf_counter() - t0
                klubs = fit.named_klubs
                q, se = measure(solver, eval_seeds, grid=fit.t_grid)
                rows.append(dict(solver=solver, steps=fit.steps, grid=f"klub@{b} ({fit.evaluations} evals)",
                                 quality=q, se=se, klub=fit.klub, fit_s=wall,
                                 t_grid=" ".join(f"{t:.4g}" for t in fit.t_grid.tolist())))
                print(rows[-1], flush=True)
            for r in rows:
                if r["solver"] == solver and r["steps"] == K and "klub" not in r:
                    r["klub"] = klubs.get(r["grid"].split("(")[1].rstrip(")"), math.nan)
            for r in rows[-len(args.budgets.split(",")) - 2:-len(args.budgets.split(","))]:
                print(r, flush=True)
    cols = ["solver", "steps", "grid", "quality", "se", "klub", "fit_s"]
    table = markdown_table(rows, cols, fmt={"quality": "{:.4f}", "se": "{:.4f}", "klub": "{:.3g}", "fit_s": "{:.0f}"})
    write_csv(out_path("klub_grids.csv"), rows)
    write_text(out_path("klub_grids.md"), f"# KLUB-fitted grids on the ring (VP)\n\n{machine()}\n\n"
               f"quality on eval seeds {args.eval_seeds} (n = {args.n}); klub held out; fit_s under load\n\n"
               f"{table}\n")
    print(table)


if __name__ == "__main__":
    main()

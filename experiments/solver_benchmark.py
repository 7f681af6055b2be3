"""Every solver × steps ∈ {10, 20, 50, 100, 1000} on the 8-mode ring oracle with the exact
score, for VP, sub-VP and VE: nfe, wall time, per-mode std ratio, off-mode fraction,
mode-weight TV and sliced W2 (with the data-vs-data floor).  Writes results/solver_benchmark.md
and one CSV per SDE.   python experiments/solver_benchmark.py [--n 4000]

Two studies behind the defaults (ranking metric: within-mode W2 + off-mode fraction):
  --grid-study        each ODE solver × grid at 10 and 20 nfe, seeds 0 and 1 -> default grid per SDE
  --final-step-study  dpmpp_2m with and without its first-order last step, K = 5…20, every grid
  --at-nfe CSV_DIR    per solver, the run with the most nfe within 10 and within 20 (from saved CSVs)"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages

import torch  # noqa: E402

import solvers  # noqa: E402
from scoresde.evaluation.metrics import mode_metrics  # noqa: E402
from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde._io import write_csv, write_text  # noqa: E402
from scoresde.evaluation.compare import best_at_nfe, ranking_key, run_compare  # noqa: E402
from scoresde.evaluation.resolve import resolve_model  # noqa: E402
from scoresde.sde import make_sde  # noqa: E402

COLS = ["solver", "grid", "steps", "nfe", "wall_s", "std_ratio", "mode_w2", "off_mode", "mode_tv", "sw2"]
FMT = {"wall_s": "{:.3f}", "std_ratio": "{:.3f}", "mode_w2": "{:.4f}", "off_mode": "{:.4f}", "mode_tv": "{:.3f}", "sw2": "{:.4f}"}


def pivot(rows) -> str:
    """solver × steps -> 'mode W2 / std ratio' (nfe), the compact form shown in the README."""
    steps = sorted({r["steps"] for r in rows if r["steps"] != ""}, key=int)
    out = ["| solver | grid | " + " | ".join(f"{k} steps" for k in steps) + " |",
           "|---|---|" + "---|" * len(steps)]
    for name in dict.fromkeys(r["solver"] for r in rows):
        mine = {r["steps"]: r for r in rows if r["solver"] == name}
        cells = []
        for k in steps:
            r = mine.get(k) or mine.get("")
            cells.append(f"{float(r['mode_w2']):.3f} / {float(r['std_ratio']):.3f} ({r['nfe']})" if r else "")
        grid = next(iter(mine.values()))["grid"]
        if "" in mine:  # adaptive: one run, same in every column
            cells = [cells[0]] + ["〃"] * (len(steps) - 1)
        out.append(f"| {name} | {grid} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def from_csv(name):
    import csv
    rows = list(csv.DictReader(open(out_path(f"solver_benchmark_{name}.csv"))))
    for r in rows:
        r["steps"] = int(r["steps"]) if r["steps"] else ""
    return rows


GRID_STUDY_SOLVERS = ("euler", "heun", "euler_t", "heun_t")


def evals_per_step(solver: str, sde) -> int:
    """Score evaluations one more step costs (2 for Heun-type, 1 for the rest)."""
    data = resolve_model("oracle:gmm8", sde=sde)
    nfe = [solvers.sample(data.score_fn, sde, shape=(2, 2), solver=solver, steps=k,
                          generator=torch.Generator().manual_seed(0)).nfe for k in (2, 3)]
    return nfe[1] - nfe[0]


def geo_mean(xs) -> float:
    """Geometric mean; a failed run (NaN) counts as infinitely bad."""
    if not all(math.isfinite(x) for x in xs):
        return math.inf
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def grid_study(sdes, n: int, budgets=(10, 20), seeds=(0, 1)) -> str:
    """The default grid per SDE: lowest geometric mean of the ranking metric over budgets × seeds."""
    out = ["| SDE | solver | " + " | ".join(solvers.GRIDS) + " | chosen |", "|---|---|" + "---|" * (len(solvers.GRIDS) + 1)]
    for name in sdes:
        sde = make_sde(name)
        model = resolve_model("oracle:gmm8", sde=sde)
        for solver in GRID_STUDY_SOLVERS:
            per = evals_per_step(solver, sde)
            score = {}
            for grid in solvers.GRIDS:
                vals = [ranking_key(run_compare(model, [solver], [nfe // per], n=n, seed=seed, grid=grid,
                                                progress=False)[0][0]) for nfe in budgets for seed in seeds]
                score[grid] = (geo_mean(vals), vals)
            best = min(score, key=lambda g: score[g][0])
            cells = [f"{v[0]:.3f} ({' '.join(f'{x:.2f}' for x in v[1])})" for v in score.values()]
            out.append(f"| {name} | {solver} | " + " | ".join(cells) + f" | **{best}** |")
            print(out[-1], flush=True)
    return ("Cell: geometric mean of the ranking metric (the runs at " + ", ".join(map(str, budgets)) +
            f" nfe × seeds {seeds} in brackets).\n\n" + "\n".join(out))


def final_step_study(sdes, n: int, Ks=range(5, 21), thresholds=(0, 8, 10, 12, 15)) -> str:
    """dpmpp_2m with the first-order last step (when K < 15) against without it: the ranking
    metric and the mean path error to the converged ODE solution (dopri5, rtol = atol = 1e-9)."""
    rows = []
    for name in sdes:
        sde = make_sde(name)
        model = resolve_model("oracle:gmm8", sde=sde)
        x_T = sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        ref = solvers.sample(model.score_fn, sde, x_T=x_T, solver="pf_ode", rtol=1e-9, atol=1e-9).x
        for grid in solvers.GRIDS:
            for K in Ks:
                r = {"sde": name, "grid": grid, "K": K}
                for lof in (True, False):
                    x = solvers.sample(model.score_fn, sde, x_T=x_T, solver="dpmpp_2m", steps=K, grid=grid,
                                       lower_order_final=lof).x
                    r[f"rank_{lof}"] = ranking_key(mode_metrics(x.float(), model.oracle))
                    r[f"path_{lof}"] = (x - ref).norm(dim=1).mean().item()
                rows.append(r)
        print(name, "done", flush=True)
    out = ["| SDE | grid | K where first-order helps the ranking metric | K where it lowers the path error |",
           "|---|---|---|---|"]
    for name in sdes:
        for grid in solvers.GRIDS:
            mine = [r for r in rows if r["sde"] == name and r["grid"] == grid and r["K"] < 15]
            out.append(f"| {name} | {grid} | " + " ".join(str(r["K"]) for r in mine if r["rank_True"] < r["rank_False"])
                       + " | " + " ".join(str(r["K"]) for r in mine if r["path_True"] < r["path_False"]) + " |")
    out += ["", "| first-order last step when | geo-mean ranking metric | geo-mean path error |", "|---|---|---|"]
    for c in thresholds:
        pick = lambda r, key: r[f"{key}_{r['K'] < c}"]  # noqa: E731
        out.append(f"| K < {c} | {geo_mean([pick(r, 'rank') for r in rows]):.4f} | "
                   f"{geo_mean([pick(r, 'path') for r in rows]):.4f} |")
    return "\n".join(out)


def pivot_at_nfe(rows, budgets=(10, 20)) -> str:
    """solver -> ranking metric of its run with the most nfe within each budget."""
    out = ["| solver | grid | " + " | ".join(f"≤ {b} nfe" for b in budgets) + " |", "|---|---|" + "---|" * len(budgets)]
    for name in dict.fromkeys(r["solver"] for r in rows):
        cells = []
        for b in budgets:
            mine = [r for r in rows if r["solver"] == name and int(r["nfe"]) <= b]
            r = max(mine, key=lambda r: int(r["nfe"])) if mine else None
            cells.append(f"{ranking_key({k: float(r[k]) for k in ('mode_w2', 'off_mode')}):.3f} ({r['nfe']})" if r else "–")
        out.append(f"| {name} | {next(r['grid'] for r in rows if r['solver'] == name)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--steps", default="10,20,50,100,1000")
    ap.add_argument("--sdes", default="vp,subvp,ve")
    ap.add_argument("--pivot-only", action="store_true", help="print the README pivots from existing CSVs")
    ap.add_argument("--grid-study", action="store_true", help="choose each ODE solver's default grid per SDE")
    ap.add_argument("--final-step-study", action="store_true", help="dpmpp_2m's first-order last step, measured")
    ap.add_argument("--at-nfe", metavar="CSV_DIR", help="ranking metric at <= 10 and <= 20 nfe from saved CSVs")
    args = ap.parse_args()
    sdes = args.sdes.split(",")
    if args.grid_study or args.final_step_study:
        study = grid_study if args.grid_study else final_step_study
        text = study(sdes, min(args.n, 2000) if args.final_step_study else args.n)
        fname = "grid_study.md" if args.grid_study else "final_step_study.md"
        write_text(out_path(fname), text + "\n")
        print(text + "\nwrote " + out_path(fname))
        return
    if args.at_nfe:
        import csv
        for name in sdes:
            rows = list(csv.DictReader(open(os.path.join(args.at_nfe, f"solver_benchmark_{name}.csv"))))
            print(f"\n{name}\n" + pivot_at_nfe(rows))
        return
    if args.pivot_only:
        for name in args.sdes.split(","):
            print(f"\n{name}\n" + pivot(from_csv(name)))
        return
    steps = [int(s) for s in args.steps.split(",")]
    parts = [f"# Solver benchmark on the ring oracle (exact score)\n\nn = {args.n} samples per run, same x_T "
             f"and noise seed for every run. Machine: {machine()}.\n"]
    for name in args.sdes.split(","):
        model = resolve_model("oracle:gmm8", sde=make_sde(name))
        rows, _ = run_compare(model, solvers.available(), steps, n=args.n, seed=0, progress=False)
        write_csv(out_path(f"solver_benchmark_{name}.csv"), rows)
        floor = mode_metrics(model.oracle.sample(args.n, generator=torch.Generator().manual_seed(7)), model.oracle)
        parts.append(f"## {name}\n\nFloors for exact samples of this size: sliced W2 {rows[0]['sw2_floor']:.4f}, "
                     f"mode W2 {floor['mode_w2']:.4f}, mode TV {floor['mode_tv']:.4f}.\n")
        parts.append(pivot(rows) + "\n")
        parts.append(markdown_table(rows, COLS, FMT))
        for budget in (10, 20):
            ranked = sorted((r for r in rows if r["nfe"] <= budget), key=ranking_key)
            if len(ranked) >= 2:
                b, s = ranked[0], ranked[1]
                parts.append(f"\nBest at <= {budget} nfe: **{b['solver']}** (mode W2 {b['mode_w2']:.4f}, "
                             f"std ratio {b['std_ratio']:.3f}, off-mode {b['off_mode']:.4f}); runner-up "
                             f"{s['solver']} (mode W2 {s['mode_w2']:.4f}, std ratio {s['std_ratio']:.3f}, "
                             f"off-mode {s['off_mode']:.4f}).")
        parts.append("")
        print(f"{name}: best@10 {best_at_nfe(rows, 10)['solver']}, best@20 {best_at_nfe(rows, 20)['solver']}")
    write_text(out_path("solver_benchmark.md"), "\n".join(parts) + "\n")
    print("wrote", out_path("solver_benchmark.md"))


if __name__ == "__main__":
    main()

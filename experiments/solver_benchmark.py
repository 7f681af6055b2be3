"""Every solver × steps ∈ {10, 20, 50, 100, 1000} on the 8-mode ring oracle with the exact
score, for VP, sub-VP and VE: nfe, wall time, per-mode std ratio, off-mode fraction,
mode-weight TV and sliced W2 (with the data-vs-data floor).  Writes results/solver_benchmark.md
and one CSV per SDE.   python experiments/solver_benchmark.py [--n 4000]"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import solvers  # noqa: E402
from scoresde.metrics import mode_metrics  # noqa: E402
from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde._io import write_csv, write_text  # noqa: E402
from scoresde.compare import best_at_nfe, ranking_key, run_compare  # noqa: E402
from scoresde.models import resolve_model  # noqa: E402
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


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--steps", default="10,20,50,100,1000")
    ap.add_argument("--sdes", default="vp,subvp,ve")
    ap.add_argument("--pivot-only", action="store_true", help="print the README pivots from existing CSVs")
    args = ap.parse_args()
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

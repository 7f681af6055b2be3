"""Steps and eps each solver needs on the ring oracle (exact score): the smallest step count whose
samples' spread (metrics.spread_ratio against the exact p_eps) is within 2x (what compare and
sample warn outside of) and within 10 %, per SDE, in float32 at the solver's default eps and grid;
then every solver at 5 and 20 steps over eps from 1e-12 to 0.9, listing the runs 2x or more off.
The table of docs/solvers.md ("Steps and eps") is this script's output.
    python experiments/spread_regime.py [--n 2000]"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import solvers  # noqa: E402
from scoresde.evaluation.metrics import SPREAD_OFF, spread_ratio  # noqa: E402
from scoresde.oracle import GaussianMixture  # noqa: E402
from scoresde.sde import make_sde  # noqa: E402

STEPS = (2, 3, 5, 10, 20, 50, 100, 200)
EPS = (1e-12, 1e-9, 1e-6, 1e-5, 0.1, 0.5, 0.9)


def ratio(score_fn, sde, data, solver, steps, n, eps=None) -> float:
    res = solvers.sample(score_fn, sde, shape=(n, 2), solver=solver, steps=steps, eps=eps, check_finite=False,
                         generator=torch.Generator().manual_seed(0))
    return spread_ratio(res.x, data, sde, float(res.t_grid[-1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = GaussianMixture.ring()
    names = [s for s in solvers.available() if not solvers.traits(s).adaptive]
    first, off = {}, []
    for sde_name in ("vp", "subvp", "ve"):
        sde = make_sde(sde_name)
        score_fn = data.score_fn(sde)
        for s in names:
            r = {k: ratio(score_fn, sde, data, s, k, args.n) for k in STEPS}
            first[s, sde_name] = [next((k for k in STEPS if 1 / f < r[k] < f), "-") for f in (SPREAD_OFF, 1.1)]
            for k in (5, 20):
                for eps in EPS:
                    v = ratio(score_fn, sde, data, s, k, args.n, eps)
                    if not 1 / SPREAD_OFF < v < SPREAD_OFF:
                        off.append(f"{sde_name} {s} {k} steps eps {eps:g}: {v:.3g}")
    print("| solver | VP | sub-VP | VE |\n|---|---|---|---|")
    for s in names:
        print(f"| `{s}` | " + " | ".join("{} / {}".format(*first[s, f]) for f in ("vp", "subvp", "ve")) + " |")
    print("\n2x or more off at 5 or 20 steps:", "; ".join(off) or "none")


if __name__ == "__main__":
    main()

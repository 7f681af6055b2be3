"""Classifier-free guidance w ∈ {0, 0.5, 1, 3} × three solvers on the exact conditional ring oracles
(and, with --model, on a trained conditional checkpoint): class accuracy, within-class diversity,
within-mode W2 and std ratio for samples of one class.  Writes results/guidance_sweep.md.

    python experiments/guidance_sweep.py [--n 4000] [--class arc0] [--model oracle:gmm8c4 ...]

Convention: s̃ = (1 + w)·s(x, t, c) − w·s(x, t, ∅), so w = 0 is the conditional model
(diffusers' guidance_scale = 1 + w)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages

import torch  # noqa: E402

from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde._io import write_text  # noqa: E402
from scoresde.evaluation.compare import run_compare  # noqa: E402
from scoresde.evaluation.resolve import resolve_model  # noqa: E402
from scoresde.guidance import guide  # noqa: E402

WEIGHTS = (0.0, 0.5, 1.0, 3.0)
SOLVERS = {"dpmpp_2m": 20, "heun": 10, "euler_maruyama": 200}  # heun 10 steps = 19 nfe
COLS = ["w", "solver", "steps", "nfe", "class_acc", "diversity", "mode_tv", "mode_w2", "std_ratio", "off_mode"]
FMT = {"class_acc": "{:.4f}", "diversity": "{:.3f}", "mode_tv": "{:.3f}", "mode_w2": "{:.3f}", "std_ratio": "{:.3f}",
       "off_mode": "{:.4f}"}


def sweep(spec: str, label, n: int, seed: int) -> list[dict]:
    model = resolve_model(spec)
    rows = []
    for w in WEIGHTS:
        g = guide(model, label, w)
        for solver, steps in SOLVERS.items():
            recs, _ = run_compare(g, [solver], [steps], n=n, seed=seed, progress=False)
            rows += [dict(w=w, **r) for r in recs]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--class", dest="label", default="arc0")
    ap.add_argument("--model", action="append", default=None,
                    help="a conditional model spec; repeatable [default: oracle:gmm8c4, oracle:gmm8c4-overlap]")
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = [f"# Guidance sweep\n\n{machine()}; n = {args.n}, seed {args.seed}, class {args.label}\n"]
    for spec in args.model or ["oracle:gmm8c4", "oracle:gmm8c4-overlap"]:
        rows = sweep(spec, args.label, args.n, args.seed)
        parts.append(f"## {spec}\n\n{markdown_table(rows, COLS, FMT)}\n")
        print(parts[-1], flush=True)
    path = out_path("guidance_sweep.md")
    write_text(path, "\n".join(parts))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

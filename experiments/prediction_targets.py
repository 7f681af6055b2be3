"""The same ring config trained with model.prediction = epsilon, x0 and v at equal steps, over
several seeds: sample quality of each (within-mode W2, std ratio, off-mode share; dpmpp_2m 20
steps and euler_maruyama 500 steps, n = 4000), so the targets are compared within the
seed-to-seed spread.  Writes results/prediction_targets_<weighting>.md.

    python experiments/prediction_targets.py [--config configs/ring_vp.toml] [--steps 3000] [--seeds 0,1]
        [--weighting epsilon]"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages

import torch  # noqa: E402

from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde._io import write_text  # noqa: E402
from scoresde.evaluation.compare import run_compare  # noqa: E402
from scoresde.training.checkpoint import load_score_model  # noqa: E402
from scoresde.training.config import load_config  # noqa: E402
from scoresde.training.trainer import Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"dpmpp_2m": 20, "euler_maruyama": 500}
METRICS = ("mode_w2", "std_ratio", "off_mode")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "ring_vp.toml"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--weighting", default=None, help="train.weighting for every run [default: the config's]")
    ap.add_argument("--n", type=int, default=4000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for target in ("epsilon", "x0", "v", "denoiser"):
        for seed in map(int, args.seeds.split(",")):
            cfg = load_config(args.config)
            cfg.model.prediction, cfg.train.seed, cfg.train.steps = target, seed, args.steps
            cfg.train.ckpt_every = 0
            if args.weighting:
                cfg.train.weighting = args.weighting
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                losses = Trainer(cfg, out, progress=False, previews=False).train()
                wall = time.perf_counter() - t0
                model = load_score_model(os.path.join(out, "checkpoint.pt"))
            for solver, steps in RUNS.items():
                rec = run_compare(model, [solver], [steps], n=args.n, seed=0, progress=False)[0][0]
                rows.append(dict(target=target, seed=seed, solver=solver, nfe=rec["nfe"], train_s=wall,
                                 loss=statistics.fmean(losses[-200:]), **{k: rec[k] for k in METRICS}))
                print(rows[-1], flush=True)
    summary = []
    for target in ("epsilon", "x0", "v", "denoiser"):
        for solver in RUNS:
            sel = [r for r in rows if r["target"] == target and r["solver"] == solver]
            s = dict(target=target, solver=solver, runs=len(sel))
            for k in METRICS:
                vals = [r[k] for r in sel]
                s[k] = f"{statistics.fmean(vals):.3f} ({min(vals):.3f}–{max(vals):.3f})"
            summary.append(s)
    text = (f"# Prediction targets at equal steps\n\n{machine()}; config {os.path.relpath(args.config, ROOT)}, "
            f"{args.steps} steps, seeds {args.seeds}, weighting {args.weighting or 'as configured'}, n = {args.n}\n\n"
            + markdown_table(summary, ["target", "solver", "runs", *METRICS]) + "\n\nEvery run:\n\n"
            + markdown_table(rows, ["target", "seed", "solver", "nfe", "train_s", "loss", *METRICS]) + "\n")
    path = out_path(f"prediction_targets_{args.weighting or 'config'}.md")
    write_text(path, text)
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

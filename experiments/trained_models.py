"""Train the bundled ring (VP) and digits (VP, U-Net) configs on this machine, then compare
solvers on the trained models: the ring against its oracle (per-mode metrics), the digits by
sliced W2 to the data.  Checkpoints go to runs/<config>/ (an existing finished run is reused).
    python experiments/trained_models.py [--configs ring_vp,digits_vp]"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import solvers  # noqa: E402
from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde._io import write_text  # noqa: E402
from scoresde.training.checkpoint import load_checkpoint, load_score_model  # noqa: E402
from scoresde.evaluation.compare import run_compare  # noqa: E402
from scoresde.training.config import load_config  # noqa: E402
from scoresde.evaluation.metrics import mode_metrics  # noqa: E402
from scoresde.evaluation.plots import quality_vs_nfe, samples_panel  # noqa: E402
from scoresde.training.trainer import Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLS = ["solver", "grid", "steps", "nfe", "wall_s", "std_ratio", "mode_w2", "off_mode", "mode_tv", "sw2"]
FMT = {"wall_s": "{:.3f}", "std_ratio": "{:.3f}", "mode_w2": "{:.4f}", "off_mode": "{:.4f}", "mode_tv": "{:.3f}", "sw2": "{:.4f}"}


def train(name):
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.toml"))
    out = os.path.join(ROOT, "runs", name)
    ck = os.path.join(out, "checkpoint.pt")
    if os.path.exists(ck) and load_checkpoint(ck)["step"] >= cfg.train.steps:
        return ck, None, None
    t0 = time.perf_counter()
    tr = Trainer(cfg, out, resume=os.path.exists(ck), progress=False)
    losses = tr.train()
    return ck, time.perf_counter() - t0, sum(losses[-100:]) / len(losses[-100:])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", default="ring_vp,digits_vp")
    args = ap.parse_args()
    parts = [f"# Trained models\n\nMachine: {machine()}.\n"]
    for name in args.configs.split(","):
        ck, wall, loss = train(name)
        cfg = load_config(os.path.join(ROOT, "configs", f"{name}.toml"))
        model = load_score_model(ck)
        parts.append(f"## {name}\n")
        if wall is not None:
            parts.append(f"Training: {cfg.train.steps} steps, batch {cfg.data.batch_size}, {wall:.0f} s "
                         f"({cfg.train.steps / wall:.1f} steps/s); final loss (mean of last 100) {loss:.4f}.\n")
        is_2d = model.shape == (2,)
        n = 4000 if is_2d else 256
        steps = [10, 20, 50, 100, 1000] if is_2d else [10, 20, 50, 100]
        names = ["ddpm", "ddim", "euler_maruyama", "heun", "dpmpp_2m", "pf_ode"]
        rows, samples = run_compare(model, names, steps, n=n, seed=0, progress=False)
        if model.oracle is not None:
            em = solvers.sample(model.score_fn, model.sde, shape=(5000, 2), solver="euler_maruyama", steps=1000,
                                generator=torch.Generator().manual_seed(0)).x
            q = mode_metrics(em, model.oracle)
            parts.append(f"Quality, EMA weights, Euler–Maruyama 1000 steps, 5000 samples: on a mode "
                         f"{100 * (1 - q['off_mode']):.2f} %, per-mode std ratio {q['std_ratio']:.3f}, "
                         f"mode-weight TV {q['mode_tv']:.3f}.\n")
        if rows and "sw2_floor" in rows[0]:
            parts.append(f"sliced-W2 floor (two data samples of {n}): {rows[0]['sw2_floor']:.4f}\n")
        parts.append(markdown_table(rows, [c for c in COLS if any(c in r for r in rows)], FMT) + "\n")
        quality_vs_nfe(rows, out_path(f"{name}_quality_vs_nfe.png"), title=f"trained {name}")
        samples_panel(samples, out_path(f"{name}_samples.png"))
        print("\n".join(parts[-4:]))
    write_text(out_path("trained_models.md"), "\n".join(parts) + "\n")
    print("wrote", out_path("trained_models.md"))


if __name__ == "__main__":
    main()

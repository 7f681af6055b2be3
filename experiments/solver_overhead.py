"""Solver overhead: wall time of a sampling run / time spent inside the score network during
that same run, on an MLP-sized ScoreModel (hidden 256, 4 residual blocks) at batch 8192.
1.00 means the solver loop costs nothing beyond the network.  Timing the network inside the
run (synchronising around each call) removes the drift between separate measurements; the
isolated-call column (nfe × median time of one call, timed beside the run) is a cross-check.
    python experiments/solver_overhead.py [--device cuda]"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import solvers  # noqa: E402
from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde import VPSDE  # noqa: E402
from scoresde._io import write_text  # noqa: E402
from scoresde.nn import MLP, ScoreModel  # noqa: E402


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    sde = VPSDE()
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, 256, 4), sde).to(dev).eval()
    x = torch.randn(args.batch, 2, device=dev)
    t = torch.full((args.batch,), 0.5, device=dev)

    def time_call():
        """Median time of one score call, measured next to each solver run so drift cancels."""
        with torch.no_grad():
            model(x, t)
            sync(dev)
            calls = []
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(3):
                    model(x, t)
                sync(dev)
                calls.append((time.perf_counter() - t0) / 3)
        return statistics.median(calls)

    class Timed:
        """The model, with the time spent inside it summed."""

        def __init__(self):
            self.total = 0.0

        def __call__(self, x, t):
            sync(dev)
            t0 = time.perf_counter()
            out = model(x, t)
            sync(dev)
            self.total += time.perf_counter() - t0
            return out

    rows = []
    for name in solvers.available():
        opts = {"method": "rk4"} if name == "pf_ode" else {}
        ratios, walls, nets, t_calls = [], [], [], []
        for r in range(args.repeats):
            t_calls.append(time_call())
            g = torch.Generator(device=dev).manual_seed(r)
            timed = Timed()
            sync(dev)
            t0 = time.perf_counter()
            res = solvers.sample(timed, sde, shape=(args.batch, 2), solver=name, steps=args.steps, generator=g,
                                 device=dev, **opts)
            sync(dev)
            walls.append(time.perf_counter() - t0)
            nets.append(timed.total)
            ratios.append(walls[-1] / timed.total)
        t_call = statistics.median(t_calls)
        rows.append({"solver": name + (" (rk4)" if opts else ""), "nfe": res.nfe,
                     "wall_s": statistics.median(walls), "network_s": statistics.median(nets),
                     "overhead": statistics.median(ratios),
                     "vs_isolated_call": statistics.median(walls) / (res.nfe * t_call)})
        print(f"{rows[-1]['solver']:18} nfe {res.nfe:4d}  wall {rows[-1]['wall_s']:.3f}s  "
              f"overhead {rows[-1]['overhead']:.4f}  vs isolated {rows[-1]['vs_isolated_call']:.3f}")
    text = (f"# Solver overhead\n\nMLP ScoreModel (hidden 256, 4 blocks), batch {args.batch}, {args.steps} steps, "
            f"device {dev}; one score call = {t_call * 1e3:.2f} ms (median, timed beside each run). "
            f"Machine: {machine()}.\n\n"
            + markdown_table(rows, ["solver", "nfe", "wall_s", "network_s", "overhead", "vs_isolated_call"],
                             {"wall_s": "{:.3f}", "network_s": "{:.3f}", "overhead": "{:.4f}",
                              "vs_isolated_call": "{:.3f}"}) + "\n")
    write_text(out_path(f"solver_overhead_{dev.type}.md"), text)
    print("wrote", out_path(f"solver_overhead_{dev.type}.md"))


if __name__ == "__main__":
    main()

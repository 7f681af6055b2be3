"""Solver overhead on a launch-bound network: an MLP ScoreModel (hidden 256, 4 residual blocks)
at batch 8192.  For every solver, eager and (on CUDA) replayed from CUDA graphs:

  vs_call   wall time ÷ (nfe × one eager network call, timed beside the run): 1.00 means the
            solve costs what calling the network nfe times costs; below 1 is faster than that
            (possible only when the network itself is replayed from a graph)
  overhead  eager only: wall ÷ the time spent inside the network during the same run
            (synchronised around each call; drift between separate measurements cancels)

With --anchors, diffusers' scheduler loops (DDPM, DDIM, Euler, Heun, DPM-Solver++ 2M) drive the
same network on the same device and are timed the same way (skipped when diffusers is absent:
pip install 'scoresde[bench]').
    python experiments/solver_overhead.py [--device cuda] [--anchors] [--steps 50] [--batch 8192]"""
import argparse
import inspect
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
from scoresde.training.nn import MLP, ScoreModel  # noqa: E402

OPTIONS = {"pf_ode": {"method": "rk4"}}  # a fixed-step pf_ode; the adaptive one is not a per-step loop


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed_median(run, dev, repeats):
    """Median wall time of run() over `repeats`, after one untimed call (first-call costs, graph capture)."""
    run()
    walls = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        out = run()
        sync(dev)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), out


class Timed:
    """The model, with the time spent inside it summed (a sync around each call)."""

    def __init__(self, model, dev):
        self.model, self.dev, self.total = model, dev, 0.0

    def __call__(self, x, t):
        sync(self.dev)
        t0 = time.perf_counter()
        out = self.model(x, t)
        sync(self.dev)
        self.total += time.perf_counter() - t0
        return out


def diffusers_schedulers():
    """name -> a diffusers scheduler on DDPM's linear β (1e-4 … 0.02, 1000 steps), or {} without diffusers."""
    try:
        import diffusers
    except ImportError:
        return {}
    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    return {
        "DDPMScheduler": lambda: diffusers.DDPMScheduler(clip_sample=False, **common),
        "DDIMScheduler": lambda: diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common),
        "EulerDiscreteScheduler": lambda: diffusers.EulerDiscreteScheduler(**common),
        "HeunDiscreteScheduler": lambda: diffusers.HeunDiscreteScheduler(**common),
        "DPMSolverMultistepScheduler (2M)": lambda: diffusers.DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2, **common),
    }


def diffusers_loop(make, model, x_T, steps, generator):
    """A diffusers pipeline's denoising loop with our ε-network: timestep k is our t = (k + 1)/N.
    Returns (samples, network calls)."""
    sched = make()
    sched.set_timesteps(steps, device=x_T.device)
    takes_gen = "generator" in inspect.signature(sched.step).parameters
    x, calls, B = x_T * sched.init_noise_sigma, 0, x_T.shape[0]
    with torch.no_grad():
        for k in sched.timesteps:
            eps = model.eps(sched.scale_model_input(x, k), ((k.float() + 1) / 1000).expand(B))
            calls += 1
            x = sched.step(eps, k, x, **({"generator": generator} if takes_gen else {})).prev_sample
    return x, calls


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--anchors", action="store_true", help="also time diffusers' scheduler loops")
    ap.add_argument("--solvers", default=",".join(solvers.available()))
    args = ap.parse_args()
    dev = torch.device(args.device)
    sde = VPSDE()
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, 256, 4), sde).to(dev).eval()
    x = torch.randn(args.batch, 2, device=dev)
    t = torch.full((args.batch,), 0.5, device=dev)

    def one_call():
        """Median time of one eager score call, measured next to each run so drift cancels."""
        with torch.no_grad():
            return timed_median(lambda: model(x, t), dev, 15)[0]

    def gen(seed):
        return torch.Generator(device=dev).manual_seed(seed)

    rows, t_calls = [], []
    graphs = dev.type == "cuda"
    for name in args.solvers.split(","):
        opts = OPTIONS.get(name, {})
        run_kw = dict(shape=(args.batch, 2), solver=name, steps=args.steps, device=dev, **opts)
        row = {"solver": name + (f" ({opts['method']})" if opts else "")}
        t_call = one_call()
        t_calls.append(t_call)
        ratios, walls = [], []
        for r in range(args.repeats):  # eager, with the time inside the network summed
            timed = Timed(model, dev)
            sync(dev)
            t0 = time.perf_counter()
            res = solvers.sample(timed, sde, generator=gen(r), **run_kw)
            sync(dev)
            walls.append(time.perf_counter() - t0)
            ratios.append(walls[-1] / timed.total)
        row.update(nfe=res.nfe, eager_s=statistics.median(walls), overhead=statistics.median(ratios),
                   eager_vs_call=statistics.median(walls) / (res.nfe * t_call))
        if graphs:
            fn = solvers.GraphedScore(model)  # kept across repeats: the untimed first run captures
            wall, res = timed_median(lambda: solvers.sample(fn, sde, generator=gen(0), **run_kw), dev, args.repeats)
            row.update(graphed_s=wall, graphed_vs_call=wall / (res.nfe * t_call),
                       graphed="yes" if fn.graphs and not fn.eager else "fell back to eager")
        rows.append(row)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)

    anchors = []
    if args.anchors:
        makers = diffusers_schedulers()
        if not makers:
            print("diffusers is not installed: anchors skipped (pip install 'scoresde[bench]')")
        for label, make in makers.items():
            x_T = torch.randn(args.batch, 2, generator=gen(0), device=dev)
            t_call = one_call()
            t_calls.append(t_call)
            wall, (_, calls) = timed_median(lambda: diffusers_loop(make, model, x_T, args.steps, gen(1)), dev,
                                            args.repeats)
            anchors.append({"diffusers loop": label, "nfe": calls, "wall_s": wall, "vs_call": wall / (calls * t_call)})
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in anchors[-1].items()),
                  flush=True)

    t_call = statistics.median(t_calls)
    where = (f"{torch.cuda.get_device_name(dev)}, CUDA {torch.version.cuda}" if dev.type == "cuda" else "CPU")
    cols = ["solver", "nfe", "eager_s", "overhead", "eager_vs_call"] + (
        ["graphed_s", "graphed_vs_call", "graphed"] if graphs else [])
    fmt = {"eager_s": "{:.4f}", "overhead": "{:.3f}", "eager_vs_call": "{:.3f}", "graphed_s": "{:.4f}",
           "graphed_vs_call": "{:.3f}", "wall_s": "{:.4f}", "vs_call": "{:.3f}"}
    text = (f"# Solver overhead\n\nMLP ScoreModel (hidden 256, 4 blocks), batch {args.batch}, {args.steps} steps, "
            f"{where}, torch {torch.__version__}; one eager score call = {t_call * 1e3:.3f} ms (median, timed "
            f"beside each run). Machine: {machine()}.\n\n" + markdown_table(rows, cols, fmt) + "\n")
    if anchors:
        text += "\ndiffusers " + __import__("diffusers").__version__ + ", same network:\n\n" + markdown_table(
            anchors, ["diffusers loop", "nfe", "wall_s", "vs_call"], fmt) + "\n"
    path = out_path(f"solver_overhead_{dev.type}.md")
    write_text(path, text)
    print(text)
    print("wrote", path)


if __name__ == "__main__":
    main()

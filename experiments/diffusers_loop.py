"""The same diffusers model sampled by our solvers and by diffusers' own loops, at equal nfe, from
the same x_T: agreement of the samples and the wall-time ratio, measured in one run.

A randomly initialised UNet2DModel (3×32×32, block channels 32/64/64; nothing downloaded) is saved
with save_pretrained and loaded through `diffusers:PATH`.  For DDIM (η = 0) and DPM-Solver++(2M),
on diffusers' own timesteps passed to ours as an explicit grid:

  ours_s, theirs_s   median wall time of one solve (ours: solvers.sample; theirs: the
                     scheduler loop their pipelines run, plus DDIMPipeline itself for DDIM)
  ratio              ours / theirs (target ≤ 1.00)
  net_s              K network calls alone, timed beside them
  max_diff           max |ours − theirs| over the batch

    python experiments/diffusers_loop.py [--steps 20] [--batch 16] [--repeats 5] [--device cuda]"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import diffusers
except ImportError:  # an optional extra: say so and stop cleanly
    print("diffusers is not installed: pip install 'scoresde[diffusers]'")
    sys.exit(0)

import solvers  # noqa: E402
from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde._io import write_text  # noqa: E402
from scoresde.evaluation.pretrained import load_diffusers  # noqa: E402


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def median_times(runs, dev, repeats):
    """Median wall time of each run, the runs interleaved repeat by repeat (so a shared machine's
    load drifts over all of them alike), after one untimed call each; and each run's output."""
    outs = [run() for run in runs]
    walls = [[] for _ in runs]
    for _ in range(repeats):
        for k, run in enumerate(runs):
            sync(dev)
            t0 = time.perf_counter()
            outs[k] = run()
            sync(dev)
            walls[k].append(time.perf_counter() - t0)
    return [statistics.median(w) for w in walls], outs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(32, 64, 64), norm_num_groups=8,
                                 down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3)
    folder = tempfile.mkdtemp()
    unet.save_pretrained(os.path.join(folder, "unet"))
    # clip_sample off: diffusers DPM-Solver++ has no x̂_0 clip and its DDIM clips x̂_0 but not ε̂ (docs/models.md)
    diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False).save_pretrained(os.path.join(folder, "scheduler"))
    model = load_diffusers(f"diffusers:{folder}", device=dev)
    net = model.score_fn.net
    x_T = torch.randn((a.batch, *model.shape), generator=torch.Generator().manual_seed(1)).to(dev)
    rows = []
    for name, cls, ours_solver in [("DDIM", diffusers.DDIMScheduler, "ddim"),
                                   ("DPM-Solver++(2M)", diffusers.DPMSolverMultistepScheduler, "dpmpp_2m")]:
        sched = cls.from_pretrained(os.path.join(folder, "scheduler"))
        sched.set_timesteps(a.steps)
        grid = [(int(i) + 1) / 1000 for i in sched.timesteps] + [0.0]

        def theirs():
            sched.set_timesteps(a.steps)
            x = x_T.clone()
            with torch.no_grad():
                for t in sched.timesteps:
                    x = sched.step(net(x, t).sample, t, x).prev_sample
            return x

        def ours():
            return solvers.sample(model.score_fn, model.sde, x_T=x_T, solver=ours_solver, grid=grid,
                                  **({"schedule": "discrete"} if ours_solver == "ddim" else {})).x

        def network():
            with torch.no_grad():
                for t in sched.timesteps:
                    net(x_T, t)

        runs = [theirs, ours, network]
        if ours_solver == "ddim":
            pipe = diffusers.DDIMPipeline(unet=net, scheduler=cls.from_pretrained(os.path.join(folder, "scheduler")))
            pipe.set_progress_bar_config(disable=True)
            runs.append(lambda: pipe(batch_size=a.batch, num_inference_steps=a.steps, output_type="np",
                                     generator=torch.Generator().manual_seed(1)))
        walls, outs = median_times(runs, dev, a.repeats)
        row = dict(sampler=name, nfe=a.steps, ours_s=walls[1], theirs_s=walls[0], ratio=walls[1] / walls[0],
                   net_s=walls[2], max_diff=float((outs[1] - outs[0]).abs().max()))
        if len(walls) > 3:
            row["pipeline_s"] = walls[3]
        rows.append(row)
        print(row, flush=True)
    head = (f"machine: {machine()}; batch {a.batch}, {a.steps} steps, UNet2DModel 3×32×32 "
            f"(32/64/64 channels), median of {a.repeats} interleaved repeats")
    table = markdown_table(rows, ["sampler", "nfe", "ours_s", "theirs_s", "ratio", "pipeline_s", "net_s", "max_diff"],
                           fmt={"max_diff": "{:.2g}", "ratio": "{:.3f}"})
    print(head)
    print(table)
    write_text(out_path("diffusers_loop.md"), head + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()

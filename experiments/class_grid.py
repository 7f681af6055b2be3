"""Samples of a class-conditional image checkpoint by class and guidance weight: one PNG with a
panel per w (rows = classes, columns = the same x_T for every class), and, for labelled training
data, the share of samples whose nearest training image (Euclidean, 1-NN) has the asked class.

    python experiments/class_grid.py CKPT [--w 0,1,3] [--per-class 8] [--n-score 100]
        [--solver heun --steps 20] [--out results/class_grid.png]"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages

import torch  # noqa: E402

import solvers  # noqa: E402
from _util import out_path  # noqa: E402
from scoresde.evaluation.resolve import resolve_model  # noqa: E402
from scoresde.guidance import guide  # noqa: E402
from scoresde.training.data import data_from_config  # noqa: E402
from scoresde.training.figures import image_grid, pyplot, save  # noqa: E402


def draw(model, label, w, n, solver, steps, seed=0):
    g = guide(model, label, w)
    x_T = model.sde.prior_sample((n, *model.shape), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return solvers.sample(g.score_fn, g.sde, x_T=x_T, solver=solver, steps=steps,
                              generator=torch.Generator().manual_seed(seed + 1)).x.clamp(-1, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--w", default="0,1,3")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--n-score", type=int, default=100, help="samples per class for the 1-NN class accuracy")
    ap.add_argument("--solver", default="heun")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = resolve_model(args.checkpoint)
    weights = [float(w) for w in args.w.split(",")]
    train = data_from_config(model.data_config)
    table, labels = train.head(10 ** 9), train.labels
    plt = pyplot()
    fig, axes = plt.subplots(1, len(weights), figsize=(3.2 * len(weights), 4), layout="constrained", squeeze=False)
    for ax, w in zip(axes[0], weights):
        rows, hits, total = [], 0, 0
        for c in range(len(model.class_names)):
            x = draw(model, c, w, max(args.per_class, args.n_score), args.solver, args.steps)
            rows.append(x[:args.per_class])
            if labels is not None:
                nearest = torch.cdist(x.flatten(1), table.flatten(1)).argmin(1)
                hits += int((labels[nearest] == c).sum())
                total += x.shape[0]
        acc = f"; 1-NN class accuracy {hits / total:.3f}" if total else ""
        print(f"w = {w:g}{acc}", flush=True)
        ax.imshow(image_grid(torch.cat(rows), nrow=args.per_class), cmap="gray")
        ax.set_title(f"w = {w:g}{acc.replace('; 1-NN class accuracy', chr(10) + '1-NN acc')}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{os.path.basename(args.checkpoint)}: rows = classes {', '.join(model.class_names)}; "
                 f"{args.solver} {args.steps} steps", fontsize=8)
    path = args.out or out_path("class_grid.png")
    save(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

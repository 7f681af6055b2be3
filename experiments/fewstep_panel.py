"""Few-step panel: pathwise error against each model's converged probability-flow ODE, for our
defaults, our named and tuned grids, and the anchors (diffusers; the `bench` extra), at 5, 10
and 20 score evaluations.

Error of a sampler from x_T: RMS over the 512 prior draws (seed 0) of ‖x − x_ref‖/√D, x_ref the
same model's pf_ode (dopri5) at rtol = atol = 1e-7 from the same x_T, every side ending at the
SDE's default eps (anchors: at their last σ̃, mapped back; see anchor_comparison.Bridge).

Panel (every model fixed by a seed; the trained checkpoints are made here and cached under
runs/fewstep_panel/<config>/):
  ring      configs/ring_vp.toml, trained (MLP, VP)                         choose
  gauss     anisotropic 4-D Gaussian oracle (stds 0.05 … 1.5), every SDE      choose
  grid25    5×5 grid of modes, std 0.05 (experiments/tuned_grids.grid25)     choose
  mix16     16-D mixture of 4 random Gaussians (tuned_grids.random_mixture)  choose
  ringo     the 8-mode ring oracle the tuned grids were fitted on              choose
  digits    configs/digits_vp.toml, trained (U-Net, VP)                      held out
  mixture   2-D mixture oracle, unequal weights (0.45 … 0.05) and stds         held out
The defaults (grid per solver and budget, and the solver per budget) are chosen on the "choose"
models (lowest worst-case ratio to each model's best anchor) and reported on the held-out ones.

    python experiments/fewstep_panel.py [--digits-steps 3000] [--sdes vp,subvp,ve] [--train-only]

Writes results/fewstep_panel.md, .csv and results/fewstep_choice.json (the choice); with
--write-defaults also solvers/fewstep_defaults.json, the library's few-step defaults.
"""
import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import solvers  # noqa: E402
from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde._io import write_csv, write_text  # noqa: E402
from scoresde.oracle import GaussianMixture  # noqa: E402
from scoresde.sde import make_sde  # noqa: E402
from solvers.optimize import steps_for_nfe  # noqa: E402
from tuned_grids import grid25, random_mixture  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGETS = (5, 10, 20)
# the deterministic fixed-step solvers: each has a pathwise error against the ODE.  ddim is out: at
# η = 0 it is `euler` (tests/test_solvers_crosscheck.py), and its default grid must stay ddpm's,
# since η = 1 is ddpm on the same grid.
DETERMINISTIC = ("euler", "heun", "euler_t", "heun_t", "dpmpp_2m", "dpmpp_3m", "unipc", "deis")
# The ring oracle the tuned grids were fitted on is a choose model too: it favours them, but a tuned
# grid must also win on the held-out models to become a default.
CHOOSE = {"vp": ("ring", "ringo", "gauss", "grid25", "mix16"), "subvp": ("ringo", "gauss", "grid25", "mix16"),
          "ve": ("ringo", "gauss", "grid25", "mix16")}
HELD_OUT = {"vp": ("digits", "mixture"), "subvp": ("mixture",), "ve": ("mixture",)}
# The rule the fewstep table replaces, for the report's comparison column: the tuned grid up to
# these step counts (fitted on the ring oracle), else the solver's named default.
MAIN_TUNED = {"deis": 20, "euler": 20, "dpmpp_3m": 20, "heun": 10, "heun_t": 10}


def mixture() -> GaussianMixture:
    """Five 2-D modes with unequal weights and scales (a stiff, lopsided target)."""
    means = [[-3.0, 0.0], [2.0, 2.5], [2.5, -2.0], [0.0, 4.0], [-1.0, -3.5]]
    stds = [0.5, 0.05, 0.2, 0.1, 0.8]
    return GaussianMixture(means, [[s * s, s * s] for s in stds], [0.45, 0.25, 0.15, 0.10, 0.05], name="mixture5")


def gauss() -> GaussianMixture:
    return GaussianMixture.gaussian(4, mean=[0.5, -1.0, 0.0, 2.0], stds=[0.05, 0.2, 0.7, 1.5])


def train(name: str, steps: int | None):
    """The checkpoint of configs/<name>.toml trained (seed from the config, train.seed = 0) to
    `steps` (None: the config's), cached under runs/fewstep_panel/<name>[_<steps>]/."""
    from scoresde.training.checkpoint import load_checkpoint
    from scoresde.training.config import load_config
    from scoresde.training.trainer import Trainer

    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.toml"))
    if steps is not None and steps != cfg.train.steps:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
        name = f"{name}_{steps}"
    out = os.path.join(ROOT, "runs", "fewstep_panel", name)
    ck = os.path.join(out, "checkpoint.pt")
    if os.path.exists(ck) and load_checkpoint(ck)["step"] >= cfg.train.steps:
        return ck
    t0 = time.perf_counter()
    Trainer(cfg, out, resume=os.path.exists(ck), progress=False, previews=False).train()
    print(f"trained {name}: {cfg.train.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return ck


def panel_models(sde_name: str, args):
    """{model name: (score_fn, sde, shape, dtype)} for this SDE."""
    sde = make_sde(sde_name)
    out = {}
    for name in CHOOSE[sde_name] + HELD_OUT[sde_name]:
        if args.models and name not in args.models.split(","):
            continue
        if name in ("ring", "digits"):
            from scoresde.training.checkpoint import load_score_model

            steps = args.digits_steps if name == "digits" else args.ring_steps
            model = load_score_model(train(f"{name}_vp", steps))
            out[name] = (model.score_fn, model.sde, tuple(model.shape), torch.float32)
        else:
            data = {"gauss": gauss, "mixture": mixture, "grid25": grid25, "mix16": random_mixture,
                    "ringo": GaussianMixture.ring}[name]()
            out[name] = (data.score_fn(sde), sde, (data.D,), torch.float64)
    return out


def rms(x, ref) -> float:
    d = (x - ref).reshape(x.shape[0], -1).double()
    return float((d.pow(2).sum(1) / d.shape[1]).mean().sqrt())


def runs_for(sde, score, probe):
    """(budget, family, config, nfe, run(x_T) -> x) for ours: every solver × named and tuned grid at
    the most steps that fit the budget on its default grid."""
    out = []
    for name in DETERMINISTIC:
        for b in BUDGETS:
            try:
                K, nfe = steps_for_nfe(solvers.sample, score, sde, name, b, probe, None, None, False, {})
            except solvers.SolverError:
                continue
            # every default, past or chosen, is one of these: the report reads them off
            for grid in list(solvers.GRIDS) + (["tuned"] if solvers.tuned.has_tuned(name, sde) else []):
                def run(x, name=name, K=K, grid=grid):
                    return solvers.sample(score, sde, x_T=x, solver=name, steps=K, grid=grid).x
                out.append((b, "ours (grids)", f"{name} {grid} K={K}", nfe, run))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdes", default="vp,subvp,ve")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--digits-steps", type=int, default=None, help="train digits to this many steps [config: 3000]")
    ap.add_argument("--ring-steps", type=int, default=None, help="train the ring to this many steps [config: 10000]")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--models", default=None, help="only these panel models (comma list; merge runs with --report-only)")
    ap.add_argument("--no-anchors", action="store_true", help="skip diffusers even where installed")
    ap.add_argument("--tag", default="", help="suffix of the output files")
    ap.add_argument("--write-defaults", action="store_true",
                    help="write the choice to solvers/fewstep_defaults.json (the library's defaults)")
    ap.add_argument("--report-only", action="store_true",
                    help="re-render from the CSV of --tag (a comma list merges runs, written under the first)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.report_only:  # --tag .vp,.sv: one report from the CSVs of several runs
        return report([r for tag in args.tag.split(",") for r in read_rows(tag)], args, 0.0, True)
    if args.train_only:
        train("ring_vp", args.ring_steps)
        train("digits_vp", args.digits_steps)
        return
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # diffusers' log(0) at the appended σ̃ = 0
    df = None
    if not args.no_anchors:
        try:
            df = importlib.import_module("diffusers")
        except ImportError:
            print("diffusers is not installed: the anchor column is skipped (pip install -e '.[bench]')")
    t_start = time.perf_counter()
    rows = []
    for sde_name in args.sdes.split(","):
        for model, (score, sde, shape, dtype) in panel_models(sde_name, args).items():
            t0 = time.perf_counter()
            x_T = sde.prior_sample((args.n, *shape), generator=torch.Generator().manual_seed(args.seed), dtype=dtype)
            ref = solvers.sample(score, sde, x_T=x_T, solver="pf_ode", rtol=1e-7, atol=1e-7)
            probe = x_T[:2]
            part = "choose" if model in CHOOSE[sde_name] else "held out"

            def record(b, fam, cfg, nfe, x):
                rows.append(dict(sde=sde_name, model=model, part=part, budget=b, family=fam, config=cfg, nfe=nfe,
                                 error=rms(x, ref.x)))
            for b, fam, cfg, nfe, run in runs_for(sde, score, probe):
                try:
                    record(b, fam, cfg, nfe, run(x_T))
                except solvers.SolverError:  # e.g. a log-SNR grid to eps = 0 (ddim on VP)
                    continue
            if df is not None:
                with torch.no_grad():  # the anchors call the network outside solvers.sample's no_grad
                    anchor_runs(df, sde, score, x_T, probe, record)
            print(f"{sde_name} {model}: reference {ref.nfe} nfe; {time.perf_counter() - t0:.0f} s", flush=True)
    write_csv(out_path(f"fewstep_panel{args.tag}.csv"), rows)
    report(rows, args, time.perf_counter() - t_start, df is not None)


def anchor_runs(df, sde, score, x_T, probe, record):
    """diffusers' samplers over their spacings (anchor_comparison.diffusers_configs), the most steps
    that fit each budget and one fewer, mapped back to our x at their final σ̃."""
    from anchor_comparison import Bridge, diffusers_configs, to_data, within_budgets

    bridge = Bridge(sde, lambda x, t: score(x, t.to(x.dtype)))
    for cfg, run in diffusers_configs(df, bridge):
        for b, k, used in within_budgets(run, probe, bridge, BUDGETS):
            x = to_data(*run(x_T, 0, k), bridge)
            record(b, "diffusers", f"{cfg} n={k}", used, x.to(x_T.dtype))


def read_rows(tag):
    import csv

    rows = list(csv.DictReader(open(out_path(f"fewstep_panel{tag}.csv"))))
    for r in rows:
        r["budget"], r["nfe"], r["error"] = int(r["budget"]), int(r["nfe"]), float(r["error"])
    return rows


def _scores(rows, sde, b, name, models):
    """{grid: (K, worst ratio)} for solver `name` at budget b: the largest, over `models`, of its
    error divided by that model's best anchor error at b (the best of ours where no anchor ran),
    so a grid scores ≤ 1 exactly when it is at or below the best anchor on every model."""
    def ref(model):
        cell = [r for r in rows if r["sde"] == sde and r["budget"] == b and r["model"] == model
                and math.isfinite(r["error"])]
        anc = [r["error"] for r in cell if r["family"] == "diffusers"]
        return min(anc or [r["error"] for r in cell])
    refs = {m: ref(m) for m in models if any(r["model"] == m and r["sde"] == sde for r in rows)}
    cands = {}
    for r in rows:
        if r["sde"] == sde and r["budget"] == b and r["family"] == "ours (grids)" \
                and r["config"].split()[0] == name and r["model"] in refs:
            cands.setdefault(r["config"], {})[r["model"]] = r["error"] / refs[r["model"]]
    out = {}
    for c, v in cands.items():
        if len(v) == len(models):
            _, grid, k = c.split()
            out[grid] = (int(k[2:]), round(max(v.values()), 6))  # the stored evidence's precision
    return out


def choose(rows):
    """Per (SDE, budget, solver): the grid with the lowest worst-case ratio to the best anchor over
    the choose models (_scores); a 'tuned' choice stands only if it also beats the best named grid
    (by the choose models) on the held-out ones.  Per (SDE, budget): the solver, on its grid, with
    the lowest choose score.  Returns the fewstep_defaults.json structure (see solvers/fewstep.py)."""
    grids, best, evidence = {}, {}, {}
    for sde in dict.fromkeys(r["sde"] for r in rows):
        for b in BUDGETS:
            cell = {}
            for name in DETERMINISTIC:
                ch, ho = _scores(rows, sde, b, name, CHOOSE[sde]), _scores(rows, sde, b, name, HELD_OUT[sde])
                if not ch:
                    continue
                grid = min(ch, key=lambda g: ch[g][1])
                named = min((g for g in ch if g != "tuned"), key=lambda g: ch[g][1])
                if grid == "tuned" and ho and ho["tuned"][1] > ho[named][1]:
                    grid = named
                K = ch[grid][0]
                cell[name] = (grid, K, ch[grid][1])
                grids.setdefault(sde, {}).setdefault(name, {})[K] = grid
                evidence.setdefault(sde, {}).setdefault(b, {})[name] = dict(K=K, errors={
                    g: [ch[g][1], ho[g][1] if g in ho else None] for g in ch})
            if cell:
                name = min(cell, key=lambda s: cell[s][2])
                best.setdefault(sde, {})[b] = dict(solver=name, grid=cell[name][0], steps=cell[name][1])
    return dict(about="Few-step defaults chosen by experiments/fewstep_panel.py; see solvers/fewstep.py",
                choose=CHOOSE, held_out=HELD_OUT, budgets=BUDGETS, grids=grids, best=best,
                evidence_note="evidence[family][budget][solver]: K and errors[grid] = [choose, held-out] "
                              "worst ratio of the error to the model's best anchor",
                evidence=evidence)


def report(rows, args, wall, anchors):
    args.tag = args.tag.split(",")[0]
    choice = choose(rows)
    write_text(out_path(f"fewstep_choice{args.tag}.json"), json.dumps(choice, indent=1) + "\n")
    if args.write_defaults:
        write_text(solvers.fewstep.PATH, json.dumps(choice, indent=1) + "\n")
        print("wrote", solvers.fewstep.PATH)
    table = []
    for sde in choice["best"]:
        for model in CHOOSE[sde] + HELD_OUT[sde]:
            part = "choose" if model in CHOOSE[sde] else "held out"
            for b in BUDGETS:
                cell = [r for r in rows if r["sde"] == sde and r["model"] == model and r["budget"] == b]
                if not cell:
                    continue
                c = choice["best"][sde][b]
                name, grid, K = c["solver"], c["grid"], c["steps"]
                chosen = next((r for r in cell if r["family"] == "ours (grids)" and r["config"] == f"{name} {grid} K={K}"), None)
                def main_rule(r):  # the grid main's defaults take: MAIN_TUNED, else the named default
                    name, grid, k = r["config"].split()
                    tuned = name in MAIN_TUNED and int(k[2:]) <= MAIN_TUNED[name]
                    return grid == ("tuned" if tuned else solvers.named_default_grid(name, make_sde(sde)))
                defaults = [r for r in cell if r["family"] == "ours (grids)" and main_rule(r)]
                best_def = min(defaults, key=lambda r: r["error"]) if defaults else None

                def new_rule(r):  # the grid the chosen table gives this solver at this K
                    name, grid, k = r["config"].split()
                    return choice["grids"][sde].get(name, {}).get(int(k[2:])) == grid
                new = [r for r in cell if r["family"] == "ours (grids)" and new_rule(r)]
                best_new = min(new, key=lambda r: r["error"]) if new else None
                named = [r for r in cell if r["family"] == "ours (grids)"]
                best_named = min(named, key=lambda r: r["error"]) if named else None
                anc = [r for r in cell if r["family"] == "diffusers" and math.isfinite(r["error"])]
                best_anc = min(anc, key=lambda r: r["error"]) if anc else None
                fmt = lambda r: f"{r['error']:.4f} ({r['config']})" if r else "–"  # noqa: E731
                table.append({"SDE": sde, "model": model, "part": part, "≤ nfe": b, "chosen default": fmt(chosen),
                              "chosen grids (best solver)": fmt(best_new), "tuned-grid rule (best solver)": fmt(best_def), "our grids (best)": fmt(best_named),
                              "best anchor": fmt(best_anc),
                              "chosen ÷ anchor": f"{chosen['error'] / best_anc['error']:.2f}" if chosen and best_anc else "–"})
    if not table:
        print("no SDE has every choose model yet (run the rest with --models, then --report-only --tag a,b)")
        return
    md = ["# Few-step panel: pathwise error against each model's converged ODE", "",
          f"n = {args.n} prior draws (seed {args.seed}); RMS ‖x − x_ref‖/√D, x_ref = pf_ode at rtol = atol = 1e-7. "
          f"Defaults chosen on the 'choose' models, reported on all. Machine: {machine()}; {wall:.0f} s."
          + ("" if anchors else " diffusers not installed: no anchor column."), "",
          markdown_table(table, list(table[0])), "", "Chosen (worst ratio to the best anchor over the choose models):", "",
          "```", json.dumps({k: choice[k] for k in ("grids", "best")}, indent=1), "```"]
    write_text(out_path(f"fewstep_panel{args.tag}.md"), "\n".join(md) + "\n")
    print("\n".join(md[:5]))


if __name__ == "__main__":
    main()

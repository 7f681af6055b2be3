"""Few-step panel: pathwise error against each model's converged probability-flow ODE, for our
defaults, our named and tuned grids, and the anchors (diffusers; the `bench` extra), at 5, 10
and 20 score evaluations.

Error of a sampler from x_T: RMS over the 512 prior draws (seed 0) of ‖x − x_ref‖/√D, x_ref the
same model's pf_ode (dopri5) at rtol = atol = 1e-7 from the same x_T, every side ending at the
SDE's default eps (anchors: at their last σ̃, mapped back; see anchor_comparison.Bridge).

Panel (every model fixed by a seed; the trained checkpoints are made here and cached under
runs/fewstep_panel/<config>/):
  ring      configs/ring_vp.toml, trained (MLP, VP)                                 choose
  ddigits   a diffusers UNet2DModel on DDPM's linear β table (ε, integer timesteps),
            trained on the digits (train_diffusers_digits), loaded as diffusers:PATH   choose
  moons     configs/moons_subvp.toml, trained (MLP, sub-VP)                         choose
  ringve    configs/ring_ve.toml, trained (MLP, VE)                                 choose
  gauss     anisotropic 4-D Gaussian oracle (stds 0.05 … 1.5), every SDE              choose
  grid25    5×5 grid of modes, std 0.05 (experiments/tuned_grids.grid25)             choose
  mix16     16-D mixture of 4 random Gaussians (tuned_grids.random_mixture)          choose
  ringo     the 8-mode ring oracle the tuned grids were fitted on                      choose
  digits    configs/digits_vp.toml, trained (our U-Net, VP)                          held out
  mixture   2-D mixture oracle, unequal weights (0.45 … 0.05) and stds, every SDE    held out
The defaults (grid per solver and budget, and the solver per budget) are chosen on the "choose"
models by the geometric mean over them of the ratio of the error to each model's best anchor
(--rule max: the worst ratio), from the library's grids, named and tuned alike; the held-out models
only report (--tuned-veto: a tuned grid only where it also beats the best named grid on them).
Solver variants (VARIANTS: UniPC's B(h) and order 3, DEIS order 2,
the anchors' 3M formula) and one-parameter EXTRA grids are measured beside them (--solvers) and
reported, in hindsight, as what a wider search would reach; they are not chosen.

    python experiments/fewstep_panel.py [--digits-steps 3000] [--sdes vp,subvp,ve] [--train-only]
    # what docs/results.md reports: one process per part, then one report
    python experiments/fewstep_panel.py --models gauss,grid25,mix16,ringo,mixture --tag .orc
    python experiments/fewstep_panel.py --models ring,moons,ringve,digits,ddigits --solvers ALL --tag .trained
    python experiments/fewstep_panel.py --models gauss,grid25,mix16,ringo,mixture --solvers VARIANTS \
        --no-anchors --tag .var
    python experiments/fewstep_panel.py --report-only --tag .orc,.trained,.var --write-defaults

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
from scoresde.evaluation.metrics import path_error  # noqa: E402
from scoresde.oracle import GaussianMixture  # noqa: E402
from scoresde.sde import make_sde  # noqa: E402
from solvers.optimize import steps_for_nfe  # noqa: E402
from tuned_grids import grid25, random_mixture  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGETS = (5, 10, 20)
# the deterministic fixed-step solvers: each has a pathwise error against the ODE.  ddim is out: at
# η = 0 it is `euler` (tests/test_solvers_crosscheck.py), and its default grid must stay ddpm's,
# since η = 1 is ddpm on the same grid.
DETERMINISTIC = ("euler", "heun", "euler_t", "heun_t", "dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ipndm")
# solver options the anchors also vary (UniPC's B(h) and order, DEIS's order, the anchors' 3M
# formula; and iPNDM's order 4), measured as their own labels "solver:variant" (--solvers)
VARIANTS = {"unipc:bh1": ("unipc", dict(variant="bh1")), "unipc:o3": ("unipc", dict(order=3)),
            "unipc:o3bh1": ("unipc", dict(order=3, variant="bh1")), "deis:o2": ("deis", dict(order=2)),
            "dpmpp_3m:anchors": ("dpmpp_3m", dict(match_anchors=True)), "ipndm:o4": ("ipndm", dict(order=4))}
# sample(afs=True), the analytical first step (one evaluation fewer per solve): unlike the variants
# above it competes for the recommended configuration per budget ("solver:afs", chosen on the choose
# models like any other); the per-solver default grids stay those of afs=False, sample()'s default
AFS_SOLVERS = ("ipndm", "unipc", "dpmpp_2m", "deis", "euler")
VARIANTS.update({f"{s}:afs": (s, dict(afs=True)) for s in AFS_SOLVERS})
# The ring oracle the tuned grids were fitted on is a choose model too: it favours them, and the
# held-out models, which never choose, show whether they carry over (docs/results.md).
CHOOSE = {"vp": ("ring", "ddigits", "ringo", "gauss", "grid25", "mix16"),
          "subvp": ("moons", "ringo", "gauss", "grid25", "mix16"),
          "ve": ("ringve", "ringo", "gauss", "grid25", "mix16")}
# the trained panel models: their bundled configs, trained here (train())
TRAINED = {"ring": "ring_vp", "digits": "digits_vp", "moons": "moons_subvp", "ringve": "ring_ve"}
HELD_OUT = {"vp": ("digits", "mixture"), "subvp": ("mixture",), "ve": ("mixture",)}


def solver_of(label):
    """(solver name, options) of a panel label: a solver's name, or a VARIANTS key."""
    return VARIANTS.get(label, (label, {}))


def mixture() -> GaussianMixture:
    """Five 2-D modes with unequal weights and scales (a stiff, lopsided target)."""
    means = [[-3.0, 0.0], [2.0, 2.5], [2.5, -2.0], [0.0, 4.0], [-1.0, -3.5]]
    stds = [0.5, 0.05, 0.2, 0.1, 0.8]
    return GaussianMixture(means, [[s * s, s * s] for s in stds], [0.45, 0.25, 0.15, 0.10, 0.05], name="mixture5")


def gauss() -> GaussianMixture:
    return GaussianMixture.gaussian(4, mean=[0.5, -1.0, 0.0, 2.0], stds=[0.05, 0.2, 0.7, 1.5])


def train_steps(name: str, args) -> int | None:
    """The training steps asked for a TRAINED model (--digits-steps, --ring-steps; None: its config's)."""
    return {"digits": args.digits_steps, "ring": args.ring_steps}.get(name)


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


def train_diffusers_digits(steps: int) -> str:
    """A diffusers-style model: a small diffusers UNet2DModel, ε-prediction on DDPM's linear β table
    (N = 1000, integer timesteps), trained on the dequantized 8×8 digits for `steps` Adam steps
    (seed 0, batch 128, EMA 0.999) and saved with save_pretrained beside its DDPMScheduler config
    (clip_sample off: a clipped x̂₀ makes the ODE's vector field kinked, which no ODE solver should be
    judged on).  Cached under runs/fewstep_panel/diffusers_digits_<steps>/; loaded as 'diffusers:PATH'."""
    import copy

    import diffusers
    from sklearn.datasets import load_digits

    out = os.path.join(ROOT, "runs", "fewstep_panel", f"diffusers_digits_{steps}")
    if os.path.exists(os.path.join(out, "scheduler_config.json")):
        return out
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    k = torch.as_tensor(load_digits().images[:-200], dtype=torch.float32)[:, None]
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(32, 64), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    abar = sched.alphas_cumprod
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 200)
        i = torch.randint(0, k.shape[0], (128,), generator=g)
        x0 = 2 * (k[i] + torch.rand(k[i].shape, generator=g)) / 17 - 1
        tau = torch.randint(0, 1000, (128,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[tau].view(-1, 1, 1, 1)
        loss = (unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, tau).sample - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - 0.999)
        if step % 500 == 0:
            print(f"diffusers digits: step {step} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    tmp = out + ".tmp"
    ema.save_pretrained(tmp)
    sched.save_pretrained(tmp)
    os.replace(tmp, out)
    print(f"trained diffusers digits: {steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def panel_models(sde_name: str, args):
    """{model name: (score_fn, sde, shape, dtype)} for this SDE."""
    sde = make_sde(sde_name)
    out = {}
    for name in CHOOSE[sde_name] + HELD_OUT[sde_name]:
        if args.models and name not in args.models.split(","):
            continue
        if name in TRAINED:
            from scoresde.training.checkpoint import load_score_model

            model = load_score_model(train(TRAINED[name], train_steps(name, args)))
            out[name] = (model.score_fn, model.sde, tuple(model.shape), torch.float32)
        elif name == "ddigits":
            from scoresde.evaluation.resolve import resolve_model

            model = resolve_model("diffusers:" + train_diffusers_digits(args.ddigits_steps))
            out[name] = (model.score_fn, model.sde, tuple(model.shape), torch.float32)
        else:
            data = {"gauss": gauss, "mixture": mixture, "grid25": grid25, "mix16": random_mixture,
                    "ringo": GaussianMixture.ring}[name]()
            out[name] = (data.score_fn(sde), sde, (data.D,), torch.float64)
    return out


# candidate one-parameter grids beside the named ones: EDM's spacing at other ρ, and t^p spacing
EXTRA = ("edm3", "edm5", "edm10", "pow1.5", "pow3")


def extra_grid(sde, K, spec):
    from solvers.grids import time_grid

    eps = sde.default_eps
    if spec.startswith("edm"):
        return time_grid(sde, K, "edm", eps, rho=float(spec[3:]))
    p = float(spec[3:])
    u = torch.linspace(0, 1, K + 1, dtype=torch.float64)
    ts = (sde.T ** (1 / p) + u * (eps ** (1 / p) - sde.T ** (1 / p))) ** p
    ts[0], ts[-1] = sde.T, eps
    return ts


def runs_for(sde, score, probe, labels=DETERMINISTIC):
    """(budget, family, config, nfe, run(x_T) -> x) for ours: every solver (label) × named, tuned and
    EXTRA grid at the most steps that fit the budget on its default grid."""
    out = []
    for label in labels:
        name, opts = solver_of(label)
        for b in BUDGETS:
            try:
                K, nfe = steps_for_nfe(solvers.sample, score, sde, name, b, probe, None, None, False, opts)
            except solvers.SolverError:
                continue
            # every default, past or chosen, is one of these: the report reads them off
            for grid in list(solvers.GRIDS) + (["tuned"] if solvers.tuned.has_tuned(name, sde) else []) + list(EXTRA):
                def run(x, name=name, K=K, grid=grid, opts=opts):
                    if grid in EXTRA:
                        return solvers.sample(score, sde, x_T=x, solver=name, grid=extra_grid(sde, K, grid), **opts).x
                    return solvers.sample(score, sde, x_T=x, solver=name, steps=K, grid=grid, **opts).x
                out.append((b, "ours (grids)", f"{label} {grid} K={K}", nfe, run))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdes", default="vp,subvp,ve")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--digits-steps", type=int, default=None, help="train digits to this many steps [config: 3000]")
    ap.add_argument("--ring-steps", type=int, default=None, help="train the ring to this many steps [config: 10000]")
    ap.add_argument("--ddigits-steps", type=int, default=3000, help="train the diffusers UNet this many steps")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--models", default=None, help="only these panel models (comma list; merge runs with --report-only)")
    ap.add_argument("--solvers", default=",".join(DETERMINISTIC),
                    help=f"solver labels: names, variants ({', '.join(VARIANTS)}), ALL (both) or VARIANTS")
    ap.add_argument("--rule", default="gmean", choices=list(RULES),
                    help="how a grid's ratios to the best anchor over the choose models combine [gmean]")
    ap.add_argument("--tuned-veto", action="store_true",
                    help="a tuned grid only where it also beats the best named grid on the held-out models")
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
        for name, config in TRAINED.items():
            train(config, train_steps(name, args))
        train_diffusers_digits(args.ddigits_steps)
        return
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # diffusers' log(0) at the appended σ̃ = 0
    df = None
    if not args.no_anchors:
        try:
            df = importlib.import_module("diffusers")
        except ImportError:
            print("diffusers is not installed: the anchor column is skipped (pip install -e '.[bench]')")
    labels = {"ALL": list(DETERMINISTIC) + list(VARIANTS), "VARIANTS": list(VARIANTS)}.get(
        args.solvers, args.solvers.split(","))
    unknown = [s for s in labels if s not in DETERMINISTIC and s not in VARIANTS]
    if unknown:
        ap.error(f"unknown solver label(s) {', '.join(unknown)}; choose from {', '.join(DETERMINISTIC + tuple(VARIANTS))}")
    t_start = time.perf_counter()
    rows = []
    for sde_name in args.sdes.split(","):
        for model, (score, sde, shape, dtype) in panel_models(sde_name, args).items():
            t0 = time.perf_counter()
            x_T = sde.prior_sample((args.n, *shape), generator=torch.Generator().manual_seed(args.seed), dtype=dtype)
            steps = args.ddigits_steps if model == "ddigits" else train_steps(model, args)  # which checkpoint
            ref = reference(score, sde, x_T, f"{sde_name}_{model}{f'_{steps}' if steps else ''}_{args.n}_{args.seed}")
            probe = x_T[:2]
            part = "choose" if model in CHOOSE[sde_name] else "held out"

            def record(b, fam, cfg, nfe, x):
                rows.append(dict(sde=sde_name, model=model, part=part, budget=b, family=fam, config=cfg, nfe=nfe,
                                 error=path_error(x, ref.x)))
            for b, fam, cfg, nfe, run in runs_for(sde, score, probe, labels):
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


def reference(score, sde, x_T, key):
    """The converged ODE solution from x_T (pf_ode, rtol = atol = 1e-7), cached under
    runs/fewstep_panel/refs/<key>.pt with x_T: a model's reference costs up to 11 minutes here (the
    diffusers UNet) and does not depend on the solvers measured.  The key names the model's training
    steps where they are set; the cache is used only for the same x_T."""
    path = os.path.join(ROOT, "runs", "fewstep_panel", "refs", f"{key}.pt")
    if os.path.exists(path):
        cached = torch.load(path, weights_only=True)
        if torch.equal(cached["x_T"], x_T):
            return solvers.SampleResult(x=cached["x"], nfe=int(cached["nfe"]), t_grid=cached["t_grid"], solver="pf_ode")
    ref = solvers.sample(score, sde, x_T=x_T, solver="pf_ode", rtol=1e-7, atol=1e-7)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(dict(x_T=x_T, x=ref.x, nfe=ref.nfe, t_grid=ref.t_grid), path + ".tmp")
    os.replace(path + ".tmp", path)
    return ref


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


def gmean(v) -> float:
    return math.exp(sum(math.log(x) for x in v) / len(v))


RULES = {"gmean": gmean, "max": max}


def _scores(rows, sde, b, name, models, rule="gmean"):
    """{grid: (K, score)} for solver `name` at budget b over `models`, its error on each divided by
    that model's best anchor error at b (the best of ours where no anchor ran), combined by `rule`:
    'gmean' (the geometric mean: the typical ratio, which one odd model cannot decide alone) or
    'max' (the worst ratio: ≤ 1 exactly when at or below the best anchor on every model).  Only the
    library's grids (named and tuned) compete; EXTRA grids are measured, not chosen."""
    anchors = best_anchor_errors(rows, sde, b)

    def ref(model):
        if model in anchors:
            return anchors[model]
        return min(r["error"] for r in rows if r["sde"] == sde and r["budget"] == b and r["model"] == model
                   and math.isfinite(r["error"]))
    refs = {m: ref(m) for m in models if any(r["model"] == m and r["sde"] == sde for r in rows)}
    cands = {}
    for r in rows:
        if r["sde"] == sde and r["budget"] == b and r["family"] == "ours (grids)" \
                and r["config"].split()[0] == name and r["model"] in refs:
            cands.setdefault(r["config"], {})[r["model"]] = r["error"] / refs[r["model"]]
    out = {}
    for c, v in cands.items():
        _, grid, k = c.split()
        if len(v) == len(models) and (grid in solvers.GRIDS or grid == "tuned"):
            out[grid] = (int(k[2:]), round(RULES[rule](list(v.values())), 6))  # the stored evidence's precision
    return out


def _anchor_rows(rows, sde, b):
    return [r for r in rows if r["sde"] == sde and r["budget"] == b and r["family"] == "diffusers"
            and math.isfinite(r["error"])]


def best_anchor_errors(rows, sde, b) -> dict:
    """{model: its lowest diffusers error at budget b} for the models any anchor ran on."""
    best = {}
    for r in _anchor_rows(rows, sde, b):
        best[r["model"]] = min(best.get(r["model"], math.inf), r["error"])
    return best


def anchor_choice(rows, sde, b, rule="gmean"):
    """The one diffusers configuration (sampler, spacing, final σ, steps) chosen at budget b the way
    our recommendation is: the lowest `rule` over the choose models of its error ÷ that model's best
    anchor.  None where no configuration ran on every choose model."""
    best = best_anchor_errors(rows, sde, b)
    by_cfg = {}
    for r in _anchor_rows(rows, sde, b):
        if r["model"] in CHOOSE[sde]:
            by_cfg.setdefault(r["config"], []).append(r["error"] / best[r["model"]])
    full = {c: RULES[rule](v) for c, v in by_cfg.items() if len(v) == len(CHOOSE[sde])}
    return min(full, key=full.get) if full else None


def choose(rows, rule="gmean", tuned_veto=False):
    """Per (SDE, budget, solver): the grid, named or tuned, with the lowest `rule` score (_scores)
    over the choose models (with `tuned_veto`, a 'tuned' choice stands only if it also beats the best
    named grid on the held-out models, which then no longer only report).  Per (SDE, budget): the
    solver, on its grid, with the lowest choose score.  Returns the fewstep_defaults.json structure
    (see solvers/fewstep.py)."""
    grids, best, evidence = {}, {}, {}
    for sde in dict.fromkeys(r["sde"] for r in rows):
        for b in BUDGETS:
            cell = {}
            for name in DETERMINISTIC:
                ch = _scores(rows, sde, b, name, CHOOSE[sde], rule)
                ho = _scores(rows, sde, b, name, HELD_OUT[sde], rule)
                if not ch:
                    continue
                grid = min(ch, key=lambda g: ch[g][1])
                named = min((g for g in ch if g != "tuned"), key=lambda g: ch[g][1])
                if tuned_veto and grid == "tuned" and ho and ho["tuned"][1] > ho[named][1]:
                    grid = named
                K = ch[grid][0]
                cell[name] = (grid, K, ch[grid][1])
                grids.setdefault(sde, {}).setdefault(name, {})[K] = grid
                evidence.setdefault(sde, {}).setdefault(b, {})[name] = dict(K=K, errors={
                    g: [ch[g][1], ho[g][1] if g in ho else None] for g in ch})
            for label in (f"{name}:afs" for name in AFS_SOLVERS):
                ch = _scores(rows, sde, b, label, CHOOSE[sde], rule)
                ho = _scores(rows, sde, b, label, HELD_OUT[sde], rule)
                if ch:
                    grid = min(ch, key=lambda g: ch[g][1])
                    cell[label] = (grid, ch[grid][0], ch[grid][1])
                    evidence.setdefault(sde, {}).setdefault(b, {})[label] = dict(K=ch[grid][0], errors={
                        g: [ch[g][1], ho[g][1] if g in ho else None] for g in ch})
            if cell:
                label = min(cell, key=lambda s: cell[s][2])
                name, opts = solver_of(label)
                best.setdefault(sde, {})[b] = dict(solver=name, grid=cell[label][0], steps=cell[label][1],
                                                   **({"afs": True} if opts.get("afs") else {}))
    return dict(about="Few-step defaults chosen by experiments/fewstep_panel.py; see solvers/fewstep.py",
                rule=rule, tuned_veto=tuned_veto, choose=CHOOSE, held_out=HELD_OUT, budgets=BUDGETS, grids=grids, best=best,
                evidence_note=f"evidence[family][budget][solver]: K and errors[grid] = [choose, held-out] "
                              f"{rule} over the models of the ratio of the error to the model's best anchor",
                evidence=evidence)


def variant_lines(rows) -> list[str]:
    """Each solver variant against its solver's default options, per budget: the geometric mean over
    every (SDE, model, grid) both ran of the error ratio, and how often the variant is lower."""
    err = {(r["sde"], r["model"], r["budget"], *r["config"].split()[:2]): r["error"] for r in rows
           if r["family"] == "ours (grids)" and math.isfinite(r["error"])}
    out = []
    for label, (name, _) in VARIANTS.items():
        for b in BUDGETS:
            pairs = [(e, err[(sd, m, bb, name, g)]) for (sd, m, bb, lab, g), e in err.items()
                     if lab == label and bb == b and (sd, m, bb, name, g) in err]
            if pairs:
                wins = sum(v < d for v, d in pairs)
                out.append(f"- {label} vs {name} at {b} nfe: geometric-mean error ratio "
                           f"{gmean([v / d for v, d in pairs]):.3f}, lower in {wins} of {len(pairs)}")
    return out


def summary(table) -> str:
    """How many held-out cells each column has at or below the best anchor."""
    held = [r for r in table if r["part"] == "held out" and r["best anchor"] != "–"]
    def count(col):
        ok = [f"{r['SDE']} {r['model']} {r['≤ nfe']}" for r in held if r[col] != "–" and float(r[col]) <= 1]
        return f"{len(ok)} of {len(held)}" + (f" ({', '.join(ok)})" if 0 < len(ok) < len(held) else "")
    return (f"Held out, at or below the best anchor: the recommended solver on its default grid in "
            f"{count('recommended ÷ anchor')}; every solver on its default grid, best solver, in "
            f"{count('defaults ÷ anchor')}; every configuration we measured (variants and extra grids too), "
            f"best in hindsight, in {count('hindsight ÷ anchor')}. Like for like (one configuration each, "
            f"both chosen on the choose models): the recommended solver at or below the anchor chosen "
            f"the same way in {count('recommended ÷ chosen anchor')}.")


def report(rows, args, wall, anchors):
    args.tag = args.tag.split(",")[0]
    choice = choose(rows, args.rule, args.tuned_veto)
    write_text(out_path(f"fewstep_choice{args.tag}.json"), json.dumps(choice, indent=1) + "\n")
    if args.write_defaults:
        write_text(solvers.fewstep.PATH, json.dumps(choice, indent=1) + "\n")
        print("wrote", solvers.fewstep.PATH)
    table = []
    for sde in choice["best"]:
        picked = {b: anchor_choice(rows, sde, b, args.rule) for b in BUDGETS}
        for model in CHOOSE[sde] + HELD_OUT[sde]:
            part = "choose" if model in CHOOSE[sde] else "held out"
            for b in BUDGETS:
                cell = [r for r in rows if r["sde"] == sde and r["model"] == model and r["budget"] == b]
                if not cell:
                    continue
                c = choice["best"][sde][b]
                name, grid, K = c["solver"], c["grid"], c["steps"]
                label = name + (":afs" if c.get("afs") else "")
                chosen = next((r for r in cell if r["family"] == "ours (grids)" and r["config"] == f"{label} {grid} K={K}"), None)

                def new_rule(r):  # the grid the chosen table gives this solver at this K
                    name, grid, k = r["config"].split()
                    return choice["grids"][sde].get(name, {}).get(int(k[2:])) == grid
                ours = [r for r in cell if r["family"] == "ours (grids)"]
                library = [r for r in ours if r["config"].split()[0] in DETERMINISTIC
                           and r["config"].split()[1] not in EXTRA]
                anc = [r for r in cell if r["family"] == "diffusers" and math.isfinite(r["error"])]
                low = lambda rs: min(rs, key=lambda r: r["error"]) if rs else None  # noqa: E731
                # our defaults: every solver on its default grid, and the recommended configuration
                best_new, best_lib, best_any, best_anc = low([r for r in library if new_rule(r)] + [chosen] * bool(chosen)), \
                    low(library + [chosen] * bool(chosen)), low(ours), low(anc)
                fixed_anc = next((r for r in anc if r["config"] == picked[b]), None)
                fmt = lambda r: f"{r['error']:.4f} ({r['config']})" if r else "–"  # noqa: E731
                div = lambda r: f"{r['error'] / best_anc['error']:.2f}" if r and best_anc else "–"  # noqa: E731
                table.append({"SDE": sde, "model": model, "part": part, "≤ nfe": b, "recommended": fmt(chosen),
                              "defaults (best solver)": fmt(best_new), "library grids (hindsight)": fmt(best_lib),
                              "every config (hindsight)": fmt(best_any), "best anchor": fmt(best_anc),
                              "anchor chosen on the panel": fmt(fixed_anc),
                              "recommended ÷ anchor": div(chosen), "defaults ÷ anchor": div(best_new),
                              "hindsight ÷ anchor": div(best_any),
                              "recommended ÷ chosen anchor": f"{chosen['error'] / fixed_anc['error']:.2f}"
                              if chosen and fixed_anc else "–"})
    if not table:
        print("no SDE has every choose model yet (run the rest with --models, then --report-only --tag a,b)")
        return
    md = ["# Few-step panel: pathwise error against each model's converged ODE", "",
          f"n = {args.n} prior draws (seed {args.seed}); RMS ‖x − x_ref‖/√D, x_ref = pf_ode at rtol = atol = 1e-7. "
          f"Defaults chosen on the 'choose' models, reported on all. Machine: {machine()}; {wall:.0f} s."
          + ("" if anchors else " diffusers not installed: no anchor column."), "",
          markdown_table(table, list(table[0])), "", summary(table), "",
          "Solver variants against the solver's default options (every SDE × model × grid both ran):", "",
          *variant_lines(rows), "",
          f"Chosen ({choice['rule']} over the choose models of the ratio to each model's best anchor):", "",
          "```", json.dumps({k: choice[k] for k in ("grids", "best")}, indent=1), "```"]
    write_text(out_path(f"fewstep_panel{args.tag}.md"), "\n".join(md) + "\n")
    print("\n".join(md[:5]))


if __name__ == "__main__":
    main()

"""Ours against diffusers and k-diffusion at 5, 10 and 20 score evaluations, side by side.

Same oracle (the 8-mode ring with its exact score), same x_T, same metric (within-mode W2 +
off-mode fraction, scoresde.evaluation.metrics.mode_metrics; exact samples score ≈ 0.03), same nfe
(counted at the score call), for VP, sub-VP and VE.  Every configuration runs on two prior
draws: the tuning seed picks the best configuration of each family, and the table reports that
configuration on the evaluation seed, which nothing was tuned on (grids are fitted on the tuning
seed too).  Families:
  ours (defaults)   each solver called with nothing but its name and the most steps that fit (its
                    default grid — the shipped tuned one where it exists, fitted on seed 2026 draws
                    by experiments/tuned_grids.py — eps and final step)
  ours (named)      every solver × named grid × Tweedie denoise on/off × the two largest step counts
  ours (optimized)  solvers.optimize_grid (1024 fitting draws) for every deterministic (solver, denoise)
                    pair (--fit-top N: only the N best by their default or named-grid score)
  k-diffusion       euler, heun, dpm_2, lms, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde (Karras ρ = 7,
                    exponential and uniform-in-t "vp" σ schedules) and dpm_fast
  diffusers         DPMSolverMultistep (orders 2, 3), UniPC (bh1, bh2), DEIS (orders 2, 3), Euler,
                    Heun discrete, each with its default, Karras and exponential σ spacing

How our continuous SDE is handed to the anchors.  Every SDE here is x_t = m(t)·x_0 + σ(t)·z, so
x̃ = x/m obeys the VE probability-flow ODE in σ̃ = σ/m, whichever SDE it came from.
  k-diffusion gets the denoiser D(x̃; σ̃) = x̂_0 = (x + σ²·s(x, t))/m at x = m·x̃, t = t(σ̃) (exact
    inversion of the log-SNR); it starts from x̃_T = x_T/m(T) with σ̃_max = σ̃(T) and
    σ̃_min = σ̃(eps), eps our default end time.  k-diffusion's "vp" schedule is get_sigmas_vp for VP
    (the same VP SDE) and, for sub-VP and VE, the same uniform-in-t spacing of that SDE's σ̃.
  diffusers is discrete: its table is ᾱ_j = 1/(1 + σ̃(t_j)²) at t_j = (j+1)/1000 (trained_betas),
    the variance-preserving process with the same σ̃ as our SDE, so x_vp = x̃/√(1 + σ̃²) and the
    model output is our ε = −σ(t)·s(x, t).  The model is evaluated at the scheduler's own
    σ̃ for that call (scheduler.sigmas[i]), not at a rounded timestep; the final σ̃ is 0 where
    the scheduler ends there (else the sample is mapped back at its last σ̃).  float32 ᾱ cannot
    resolve σ̃ < ~3e-4, so sub-VP's table is floored at σ̃ = 2e-3 (its σ̃(0.001) is 1e-4).
A bridge check opens each SDE's section: k-diffusion's sample_euler and diffusers' Euler (Karras)
against our ddim (Euler in σ̃ on x̃) on the same σ̃ grid, max |Δx| printed (float32 σ tables in
the anchors limit it to ~1e-6).
k-diffusion's package __init__ needs torchvision and more; its sampling.py needs only torch,
scipy, torchdiffeq and torchsde, so it is loaded alone when the full package does not import.

    pip install -e ".[bench]"          # diffusers, k-diffusion (see pyproject)
    python experiments/anchor_comparison.py [--sdes vp,subvp,ve] [--n 4000] [--tune-seed 0 --eval-seed 1]
    # or one process per SDE, then one report:
    for s in vp subvp ve; do python experiments/anchor_comparison.py --sdes $s --tag .$s & done; wait
    python experiments/anchor_comparison.py --report-only --merge .vp,.subvp,.ve

Writes results/anchor_comparison.md and .csv, and the fitted grids to results/anchor_grids.json
(usable with --grid after copying one out); without the anchors it prints why and exits 0.
"""
import argparse
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import os
import sys
import time
import types
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import solvers  # noqa: E402
from _util import machine, markdown_table, out_path  # noqa: E402
from scoresde._io import write_csv, write_text  # noqa: E402
from scoresde.convert import x0_from_score  # noqa: E402
from scoresde.evaluation.metrics import mode_metrics  # noqa: E402
from scoresde.oracle import GaussianMixture  # noqa: E402
from scoresde.sde import make_sde  # noqa: E402
from solvers.optimize import steps_for_nfe  # noqa: E402

BUDGETS = (5, 10, 20)
SKIP_OURS = ("pf_ode", "torchsde")  # adaptive; torchsde's native twin euler_maruyama is in


# -- the anchors, loaded if present -----------------------------------------------------------
def load_kdiffusion():
    """k_diffusion.sampling, from the full package or, failing that, from its file alone."""
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError:
        pass
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]  # the one helper sampling.py uses
    sys.modules.update({"k_diffusion": pkg, "k_diffusion.utils": utils})
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError:
        return None


def load_diffusers():
    try:
        return importlib.import_module("diffusers")
    except ImportError:
        return None


# -- our SDE in the anchors' variables ----------------------------------------------------------
class Bridge:
    """x̃ = x/m and σ̃ = σ/m (VE form), x_vp = x̃/√(1+σ̃²) (VP form); every score call counted."""

    def __init__(self, sde, score_fn):
        self.sde, self.score_fn, self.nfe, self._t = sde, score_fn, 0, {}

    def t_of(self, sig: float) -> float:
        if sig <= 0:
            return 0.0
        if sig not in self._t:
            self._t[sig] = float(self.sde.t_from_log_snr(torch.tensor([-math.log(sig)], dtype=torch.float64)))
        return self._t[sig]

    def m_sigma(self, t: float):
        m, s = self.sde.marginal(torch.tensor([t], dtype=torch.float64))
        return float(m), float(s)

    def sigma_tilde(self, t) -> torch.Tensor:
        m, s = self.sde.marginal(torch.as_tensor(t, dtype=torch.float64).reshape(-1))
        return s / m

    def _score(self, x, t):
        self.nfe += 1
        return self.score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype))

    def denoiser(self, x_tilde, sigma, **_):
        """k-diffusion's D(x̃; σ̃) = (x + σ²s)/m at x = m·x̃."""
        t = self.t_of(float(sigma.reshape(-1)[0]))
        m, s = self.m_sigma(t)
        x = m * x_tilde
        return x0_from_score(x, self._score(x, t), m, s)

    def eps(self, x_vp, sig: float):
        """diffusers' ε-model at the VP-scaled sample: ε = −σ(t)·s(x, t), x = m·x_vp·√(1+σ̃²)."""
        t = self.t_of(sig)
        m, s = self.m_sigma(t)
        x = m * math.sqrt(1 + sig ** 2) * x_vp
        return -s * self._score(x, t)


# -- the runs ----------------------------------------------------------------------------------
def kdiff_configs(kd, bridge, eps):
    """(name, run(x_T, seed, n) -> x, stochastic) for every k-diffusion sampler × σ schedule."""
    sde = bridge.sde
    smin, smax = (float(v) for v in bridge.sigma_tilde([eps, sde.T]))
    name = sde.config()["name"]

    def schedule(kind, n):
        if kind == "karras":
            return kd.get_sigmas_karras(n, smin, smax, rho=7.0).double()
        if kind == "exponential":
            return kd.get_sigmas_exponential(n, smin, smax).double()
        if name == "vp" and sde.schedule == "linear":  # k-diffusion's VP schedule is our VP SDE (β_d = 19.9, β_min = 0.1)
            return kd.get_sigmas_vp(n, beta_d=sde.beta_max - sde.beta_min, beta_min=sde.beta_min, eps_s=eps).double()
        return torch.cat([bridge.sigma_tilde(torch.linspace(sde.T, eps, n, dtype=torch.float64)),
                          torch.zeros(1, dtype=torch.float64)])

    out = []
    for fn in ("euler", "heun", "dpm_2", "lms", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        for kind in ("karras", "exponential", "vp"):
            def run(x_T, seed, n, fn=fn, kind=kind):
                sig = schedule(kind, n)
                x = x_T / bridge.m_sigma(sde.T)[0]
                kw = {}
                if fn.endswith("_sde"):
                    kw["noise_sampler"] = kd.BrownianTreeNoiseSampler(x, float(sig[sig > 0].min()), float(sig.max()),
                                                                     seed=seed)
                return getattr(kd, f"sample_{fn}")(bridge.denoiser, x, sig, disable=True, **kw), sig
            out.append((f"k-diffusion {fn} ({kind})", run))

    def run_fast(x_T, seed, n):
        x = x_T / bridge.m_sigma(sde.T)[0]
        return kd.sample_dpm_fast(bridge.denoiser, x, smin, smax, n, disable=True), torch.tensor([smax, smin])
    out.append(("k-diffusion dpm_fast", run_fast))
    return out


def diffusers_configs(df, bridge):
    sde = bridge.sde
    t_tab = torch.arange(1, 1001, dtype=torch.float64) / 1000 * sde.T
    # diffusers keeps ᾱ in float32, which cannot resolve σ̃ < ~3e-4 (1 − ᾱ below its spacing near 1):
    # sub-VP's first table entries (σ̃(0.001) ≈ 1e-4) are floored at σ̃ = 2e-3; VP and VE never reach it.
    abar = 1 / (1 + bridge.sigma_tilde(t_tab).clamp_min(2e-3) ** 2)
    betas = (1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])).numpy()
    kinds = {
        "DPM++ 2M": (df.DPMSolverMultistepScheduler, dict(solver_order=2)),
        "DPM++ 3M": (df.DPMSolverMultistepScheduler, dict(solver_order=3)),
        "UniPC bh1": (df.UniPCMultistepScheduler, dict(solver_type="bh1")),
        "UniPC bh2": (df.UniPCMultistepScheduler, dict(solver_type="bh2")),
        "DEIS 2": (df.DEISMultistepScheduler, dict(solver_order=2)),
        "DEIS 3": (df.DEISMultistepScheduler, dict(solver_order=3)),
        "Euler": (df.EulerDiscreteScheduler, {}),
        "Heun": (df.HeunDiscreteScheduler, {}),
    }
    spacings = {"default": {}, "karras": dict(use_karras_sigmas=True), "exponential": dict(use_exponential_sigmas=True)}
    out = []
    for label, (cls, kw) in kinds.items():
        ve_scaled = cls in (df.EulerDiscreteScheduler, df.HeunDiscreteScheduler)
        # where the scheduler offers it, also end at its smallest σ̃ instead of 0 (UniPC bh1 is NaN at 0)
        finals = {"": {}}
        if "final_sigmas_type" in inspect.signature(cls.__init__).parameters:
            finals[", to σ_min"] = dict(final_sigmas_type="sigma_min")
        for (sp, spkw), (fin, finkw) in itertools.product(spacings.items(), finals.items()):
            spkw = dict(spkw, **finkw)
            sp = sp + fin
            def run(x_T, seed, n, cls=cls, kw=kw, spkw=spkw, ve_scaled=ve_scaled):
                sch = cls(num_train_timesteps=1000, trained_betas=betas, **kw, **spkw)
                sch.set_timesteps(n)
                sig = sch.sigmas.double()
                s0 = float(sig[0])
                x = x_T / bridge.m_sigma(sde.T)[0] / (1 if ve_scaled else math.sqrt(1 + s0 ** 2))
                for i, tau in enumerate(sch.timesteps):
                    x_in = sch.scale_model_input(x, tau) if ve_scaled else x
                    if ve_scaled:  # the σ̃ the scheduler itself scaled the input with
                        assert float(sch.sigmas[sch.step_index]) == float(sig[i])
                    x = sch.step(bridge.eps(x_in, float(sig[i])).to(x.dtype), tau, x).prev_sample
                return (x if ve_scaled else x * math.sqrt(1 + float(sig[-1]) ** 2)), sig
            out.append((f"diffusers {label} ({sp})", run))
    return out


def bridge_check(kd, df, bridge, x_T) -> str:
    """Same algorithm on the same σ̃ grid in three implementations: our ddim (Euler in σ̃ on x̃),
    k-diffusion's sample_euler and diffusers' Euler, on diffusers' 10-step Karras grid.  VE never
    reaches σ̃ = 0 (σ(0) = σ_min), so there the grid stops at its last σ̃ > 0 and diffusers, which
    always ends at 0, sits out."""
    sde = bridge.sde
    if df is None:
        return "bridge check needs diffusers' grid; skipped"
    run = dict(diffusers_configs(df, bridge))["diffusers Euler (karras)"]
    x_d, sig = run(x_T, 0, 10)
    reaches_zero = float(bridge.sigma_tilde([0.0])) == 0
    if not reaches_zero:
        sig = sig[:-1]
    ts = torch.tensor([bridge.t_of(float(v)) for v in sig], dtype=torch.float64)
    ts[0] = sde.T
    ours = solvers.sample(bridge.score_fn, sde, x_T=x_T, solver="ddim", grid=ts).x
    m_end = bridge.m_sigma(float(ts[-1]))[0]
    msgs = []
    if reaches_zero:
        msgs.append(f"diffusers Euler vs our ddim: max |Δx| {float((x_d - ours).abs().max()):.1e}")
    if kd is not None:
        x_k = kd.sample_euler(bridge.denoiser, x_T / bridge.m_sigma(sde.T)[0], sig, disable=True) * m_end
        msgs.append(f"k-diffusion sample_euler vs our ddim: max |Δx| {float((x_k - ours).abs().max()):.1e}")
    return "; ".join(msgs)


def within_budgets(run, probe, bridge, budgets):
    """(budget, steps, nfe) of an anchor sampler `run`: per budget the most steps whose evaluations
    fit it, and one fewer (their spacings differ), each counted on `probe` through the bridge."""
    def nfe_of(n):
        bridge.nfe = 0
        run(probe, 0, n)
        return bridge.nfe
    for b in budgets:
        n = next((n for n in range(b + 1, 1, -1) if nfe_of(n) <= b), None)
        if n is None:
            continue
        for k in sorted({n, max(n - 1, 2)}, reverse=True):
            used = nfe_of(k)
            if used <= b:
                yield b, k, used


def to_data(x_tilde, sigmas, bridge):
    """x = m·x̃ at the anchor's final σ̃ (m = 1 at σ̃ = 0)."""
    return bridge.m_sigma(bridge.t_of(float(sigmas[-1])))[0] * x_tilde


# -- scoring -----------------------------------------------------------------------------------
def quality(x, data) -> float:
    q = mode_metrics(x, data)
    return q["mode_w2"] + q["off_mode"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--sdes", default="vp,subvp,ve")
    ap.add_argument("--tune-seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=1)
    ap.add_argument("--fit-top", type=int, default=None,
                    help="fit only the best N deterministic (solver, denoise) pairs per cell (0: none) [default: all]")
    ap.add_argument("--fit-evals", type=int, default=None, help="optimizer evaluations per fit")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny solves)")
    ap.add_argument("--report-only", action="store_true", help="re-render the tables from the last CSV")
    ap.add_argument("--defaults-only", action="store_true",
                    help="rerun only the 'ours (defaults)' family into the tag's existing CSV (after a defaults change)")
    ap.add_argument("--tag", default="", help="suffix of the output files, to run SDEs in parallel processes "
                                              "(e.g. --sdes vp --tag .vp)")
    ap.add_argument("--merge", default=None, metavar="TAG,TAG,...",
                    help="with --report-only: render one report from the CSVs of these tags")
    args = ap.parse_args()
    if args.report_only:
        return report_from_csv(args.merge.split(",") if args.merge else [args.tag])
    if args.tune_seed == args.eval_seed:
        ap.error("--tune-seed and --eval-seed must differ")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Should have")  # torchsde's float round-off notes at the tree ends
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # diffusers' log(0) at the appended σ̃ = 0
    kd, df = load_kdiffusion(), load_diffusers()
    if kd is None and df is None:
        print("anchor_comparison: neither diffusers nor k-diffusion is installed; "
              "pip install -e '.[bench]' to run the side-by-side benchmark. Skipping.")
        return
    missing = [n for n, m in (("k-diffusion", kd), ("diffusers", df)) if m is None]
    t_start = time.perf_counter()
    data = GaussianMixture.ring(8, 4.0, 0.2)
    seeds = {"tune": args.tune_seed, "eval": args.eval_seed}
    rows, checks = [], []
    if args.defaults_only:
        rows = [r for r in read_rows(args.tag) if r["family"] != "ours (defaults)"]
    for sde_name in args.sdes.split(","):
        sde = make_sde(sde_name)
        score = data.score_fn(sde)
        x_T = {k: sde.prior_sample((args.n, 2), generator=torch.Generator().manual_seed(s), dtype=torch.float64)
               for k, s in seeds.items()}
        probe = x_T["tune"][:2]
        cells = {b: [] for b in BUDGETS}

        def record(budget, family, config, nfe, run):
            """run(x_T, seed) -> samples; scored on both seeds."""
            r = dict(sde=sde_name, budget=budget, family=family, config=config, nfe=nfe)
            for k in seeds:
                r[k] = quality(run(x_T[k], seeds[k]), data)
            cells[budget].append(r)
            rows.append(r)

        # ours, defaults: nothing but the solver and the steps (the tuned grid where one ships)
        for name in [s for s in solvers.available() if s not in SKIP_OURS]:
            for b in BUDGETS:
                try:
                    K, nfe = steps_for_nfe(solvers.sample, score, sde, name, b, probe, None, None, False, {})
                except solvers.SolverError:
                    continue

                def run(x, seed, name=name, K=K):
                    return solvers.sample(score, sde, x_T=x, solver=name, steps=K,
                                          generator=torch.Generator().manual_seed(seed)).x
                record(b, "ours (defaults)", f"{name} {solvers.default_grid(name, sde, K)} K={K}", nfe, run)
        if args.defaults_only:
            continue
        # ours, named grids
        for name in [s for s in solvers.available() if s not in SKIP_OURS]:
            for grid in solvers.GRIDS:
                for den in (False, True):
                    eps = solvers.default_eps(name, sde)
                    for b in BUDGETS:
                        try:
                            K, _ = steps_for_nfe(solvers.sample, score, sde, name, b, probe, grid, eps, den, {})
                        except solvers.SolverError:
                            continue
                        for k in sorted({K, max(K - 1, 1)}, reverse=True):
                            def run(x, seed, name=name, k=k, grid=grid, den=den):
                                return solvers.sample(score, sde, x_T=x, solver=name, steps=k, grid=grid, denoise=den,
                                                      generator=torch.Generator().manual_seed(seed)).x
                            nfe = solvers.sample(score, sde, x_T=probe, solver=name, steps=k, grid=grid, denoise=den,
                                                 generator=torch.Generator().manual_seed(0)).nfe
                            cfg = f"{name} {grid} K={k}{' +denoise' if den else ''}"
                            record(b, "ours (named)", cfg, nfe, run)
        # ours, fitted grids for the best deterministic (solver, denoise) pairs on the tuning seed
        for b in BUDGETS if args.fit_top != 0 else ():
            ranked = sorted((r for r in cells[b] if r["family"] in ("ours (named)", "ours (defaults)")),
                            key=lambda r: r["tune"])
            pairs, fitted = [], 0
            for r in ranked:
                name, den = r["config"].split()[0], r["config"].endswith("+denoise")
                if (name, den) in pairs:
                    continue
                pairs.append((name, den))
                try:
                    fit = solvers.optimize_grid(score, sde, solver=name, nfe=b, shape=(2,), denoise=den,
                                                seed=args.tune_seed, max_evals=args.fit_evals, n_fit=1024)
                except solvers.SolverError:  # stochastic: no pathwise fit
                    continue

                def run(x, seed, name=name, den=den, ts=fit.t_grid):
                    return solvers.sample(score, sde, x_T=x, solver=name, grid=ts, denoise=den,
                                          generator=torch.Generator().manual_seed(seed)).x
                record(b, "ours (optimized)", f"{name} fitted K={fit.steps}{' +denoise' if den else ''}", fit.nfe, run)
                cells[b][-1]["grid"] = fit.t_grid.tolist()
                fitted += 1
                if args.fit_top is not None and fitted >= args.fit_top:
                    break
        # the anchors: the most steps that fit the budget, and one fewer
        bridge = Bridge(sde, score)
        check = bridge_check(kd, df, bridge, x_T["tune"][:256])
        checks.append(f"{sde_name}: {check}")
        print(f"{sde_name} bridge check: {check}", flush=True)
        anchor_cfgs = []
        if kd is not None:
            anchor_cfgs += [("k-diffusion", *c) for c in kdiff_configs(kd, bridge, sde.default_eps)]
        if df is not None:
            anchor_cfgs += [("diffusers", *c) for c in diffusers_configs(df, bridge)]
        for family, cfg, run in anchor_cfgs:
            for b, k, used in within_budgets(run, probe, bridge, BUDGETS):
                record(b, family, f"{cfg} n={k}", used,
                       lambda x, seed, run=run, k=k: to_data(*run(x, seed, k), bridge))
        print(f"{sde_name}: {len([r for r in rows if r['sde'] == sde_name])} runs, "
              f"{time.perf_counter() - t_start:.0f} s so far", flush=True)
    if args.defaults_only:
        write_csv(out_path(f"anchor_comparison{args.tag}.csv"), rows)
        return report_from_csv([args.tag])
    write_csv(out_path(f"anchor_comparison{args.tag}.csv"), [{k: v for k, v in r.items() if k != "grid"} for r in rows])
    write_text(out_path(f"anchor_grids{args.tag}.json"), json.dumps(
        [dict(sde=r["sde"], nfe=r["nfe"], config=r["config"], t_grid=r["grid"]) for r in rows if r.get("grid")],
        indent=1) + "\n")
    header = (f"n = {args.n}; metric: within-mode W2 + off-mode fraction (exact samples ≈ 0.03); each family's "
              f"configuration chosen on seed {args.tune_seed}, reported on seed {args.eval_seed}. "
              f"Machine: {machine()}; {time.perf_counter() - t_start:.0f} s."
              + (f" Not installed: {', '.join(missing)}." if missing else ""))
    report(rows, header, checks, args.tag)


def pick(rows, **where):
    """The row chosen on the tuning seed among those matching `where` (None if none)."""
    cands = [r for r in rows if all(r[k] == v for k, v in where.items()) and math.isfinite(r["tune"])]
    return min(cands, key=lambda r: r["tune"]) if cands else None


def report(rows, header: str, checks=(), tag: str = ""):
    """README tables from the rows: ours vs anchors per (SDE, nfe), and the defaults' evidence."""
    fams = ("ours (defaults)", "ours (named)", "ours (optimized)", "k-diffusion", "diffusers")
    table, lines = [], []
    for sde in dict.fromkeys(r["sde"] for r in rows):
        for b in BUDGETS:
            f = {fam: pick(rows, sde=sde, budget=b, family=fam) for fam in fams}
            anchor = min((f[a] for a in ("k-diffusion", "diffusers") if f[a]), key=lambda r: r["tune"], default=None)
            ours = min((f[a] for a in ("ours (named)", "ours (optimized)") if f[a]), key=lambda r: r["tune"])
            cell = lambda r: f"{r['eval']:.3f}" if r else "–"  # noqa: E731
            table.append({"SDE": sde, "nfe": b, "ours defaults": cell(f["ours (defaults)"]),
                          "ours named grids": cell(f["ours (named)"]), "ours optimized grid": cell(f["ours (optimized)"]),
                          "ours best": cell(ours), "best anchor": cell(anchor),
                          "ours best is": f"{ours['config']} ({ours['nfe']})",
                          "best anchor is": f"{anchor['config']} ({anchor['nfe']})" if anchor else "–"})
            lines.append(f"- {sde} {b} nfe: " + "; ".join(
                f"{fam}: {r['config']} ({r['nfe']} nfe) tune {r['tune']:.3f} / eval {r['eval']:.3f}"
                for fam, r in f.items() if r))
    evidence = []
    for sde in dict.fromkeys(r["sde"] for r in rows):
        for name in dict.fromkeys(r["config"].split()[0] for r in rows if r["family"] == "ours (defaults)"):
            row = {"SDE": sde, "solver": name}
            for b in BUDGETS:
                d = next((r for r in rows if r["sde"] == sde and r["budget"] == b and r["family"] == "ours (defaults)"
                          and r["config"].split()[0] == name), None)
                best = pick([r for r in rows if r["config"].split()[0] == name], sde=sde, budget=b,
                            family="ours (named)")
                row[f"default @{b}"] = f"{d['eval']:.3f}" if d else "–"
                row[f"best named @{b}"] = f"{best['eval']:.3f} {' '.join(best['config'].split()[1:])}" if best else "–"
            evidence.append(row)
    md = ["# Ours vs diffusers and k-diffusion on the ring oracle", "", header, "", markdown_table(table, list(table[0])),
          "", "Bridge checks (same algorithm and grid in three codes):", ""]
    md += [f"- {c}" for c in checks] + ["", "Per family (config chosen on the tuning seed):", ""] + lines
    md += ["", "## Each solver's defaults against its best named configuration (evaluation seed)", "",
           markdown_table(evidence, list(evidence[0]))]
    write_text(out_path(f"anchor_comparison{tag}.md"), "\n".join(md) + "\n")
    print(markdown_table(table, list(table[0])))
    print("wrote", out_path(f"anchor_comparison{tag}.md"))


def read_rows(tag: str) -> list[dict]:
    """The rows of results/anchor_comparison{tag}.csv, numbers as numbers."""
    import csv

    rows = list(csv.DictReader(open(out_path(f"anchor_comparison{tag}.csv"))))
    for r in rows:
        r["budget"], r["nfe"], r["tune"], r["eval"] = int(r["budget"]), int(r["nfe"]), float(r["tune"]), float(r["eval"])
    return rows


def report_from_csv(tags):
    rows, headers, checks = [], [], []
    for tag in tags:
        rows += read_rows(tag)
        md = out_path(f"anchor_comparison{tag}.md")
        if os.path.exists(md):  # the run's header line (seeds, machine, wall time) and bridge checks
            lines = open(md).read().splitlines()
            headers.append(lines[2])
            start = next((i + 2 for i, ln in enumerate(lines) if ln.startswith("Bridge checks")), len(lines))
            checks += [ln[2:] for ln in itertools.takewhile(lambda ln: ln.startswith("- "), lines[start:])]
    report(rows, "\n\n".join(headers) or "(re-rendered from the CSV)", checks, tags[0] if len(tags) == 1 else "")


if __name__ == "__main__":
    main()

"""Explicit time grids (sequences and JSON files) and the grid optimizer."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import solvers
from scoresde import VESDE
from scoresde import VPSDE
from scoresde.cli import cli
from scoresde.oracle import GaussianMixture

from conftest import gen


# The optimizer makes thousands of tiny solves: on a busy machine, intra-op threads only spin.
pytestmark = pytest.mark.usefixtures("one_thread")


def ring_setup(sde=None):
    sde = sde or VPSDE()
    data = GaussianMixture.ring()
    return sde, data.score_fn(sde)


# -- explicit grids -------------------------------------------------------------------------------
@pytest.mark.parametrize("as_type", [list, tuple, lambda v: torch.tensor(v, dtype=torch.float64), "json",
                                     "json-object"])
def test_explicit_grid_equals_the_named_one(as_type, tmp_path):
    sde, score = ring_setup()
    named = solvers.sample(score, sde, shape=(64, 2), solver="dpmpp_2m", steps=7, grid="edm", generator=gen(3))
    ts = named.t_grid.tolist()
    if as_type in ("json", "json-object"):
        grid = str(tmp_path / "g.json")
        json.dump(ts if as_type == "json" else {"t_grid": ts, "solver": "dpmpp_2m"}, open(grid, "w"))
    else:
        grid = as_type(ts)
    res = solvers.sample(score, sde, shape=(64, 2), solver="dpmpp_2m", grid=grid, generator=gen(3))
    assert torch.equal(res.x, named.x) and res.nfe == named.nfe == 7
    assert torch.equal(res.t_grid, named.t_grid)
    assert res.grid == (grid if isinstance(grid, str) else "explicit")


@pytest.mark.parametrize("grid, kw, match", [
    ([1.0, 0.5, 0.5, 0.001], {}, r"strictly decreasing; t_1 = 0.5 is followed by t_2 = 0.5"),
    ([1.0, 0.2, 0.4, 0.001], {}, "strictly decreasing"),
    ([1.1, 0.5, 0.001], {}, r"must start at or below T = 1.0 \(the prior\), got t_0 = 1.1"),
    ([1.0, 0.5, -0.1], {}, "must end at a time >= 0"),
    ([1.0], {}, "at least 2 times"),
    ([[1.0, 0.5]], {}, "at least 2 times"),
    ([1.0, float("nan"), 0.1], {}, "must be finite"),
    (["a", "b"], {}, "sequence of numbers"),
    ([1.0, 0.5, 0.001], dict(steps=5), r"steps=5 disagrees with the explicit grid, which has 2 steps"),
    ([1.0, 0.5, 0.001], dict(eps=0.01), r"eps=0.01 disagrees with the explicit grid, which ends at 0.001"),
    ("nothere.json", {}, "grid file 'nothere.json' could not be read"),
    ("cosine", {}, "unknown time grid 'cosine'; choose one of: tuned, uniform, quadratic, edm, logsnr, an explicit"),
])
def test_bad_explicit_grids_are_named(grid, kw, match):
    sde, score = ring_setup()
    with pytest.raises(solvers.SolverError, match=match):
        solvers.sample(score, sde, shape=(4, 2), solver="euler", grid=grid, **kw)


def test_grid_file_must_hold_a_list(tmp_path):
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"times": [1.0, 0.1]}))
    with pytest.raises(solvers.SolverError, match="a list of times or an object with a 't_grid' list"):
        solvers.load_grid(str(p))


# -- the optimizer --------------------------------------------------------------------------------
def test_optimizer_finds_the_brute_force_optimum_on_the_1d_gaussian():
    """Euler with 3 steps on a 1-D Gaussian: two free times, so the best grid can be found by
    an exhaustive search (coarse lattice in λ, then a fine one around its best). The error of
    each grid is measured against the closed-form flow, independently of the optimizer's dopri5."""
    sde, eps = VPSDE(), 1e-3
    data = GaussianMixture.gaussian(1, mean=torch.tensor([0.5]), stds=torch.tensor([0.3]))
    score = data.score_fn(sde)
    fit = solvers.optimize_grid(score, sde, solver="euler", nfe=3, shape=(1,), n_fit=128, n_eval=256, seed=0)
    assert fit.steps == 3 and fit.nfe == 3 and fit.t_grid.numel() == 4

    x_T = sde.prior_sample((512, 1), generator=gen(99), dtype=torch.float64)  # neither fit nor eval draws
    T = torch.full((512,), 1.0, dtype=torch.float64)
    exact = data.flow(x_T, T, torch.full_like(T, eps), sde)

    def err(ts):
        x = solvers.sample(score, sde, x_T=x_T, solver="euler", grid=ts).x
        return float((x - exact).pow(2).sum(1).mean().sqrt())

    lam_T, lam_e = [float(v) for v in sde.log_snr(torch.tensor([1.0, eps], dtype=torch.float64))]

    def search(lo1, hi1, lo2, hi2, n):
        a, b = np.linspace(lo1, hi1, n), np.linspace(lo2, hi2, n)
        pairs = [(u, v) for u in a for v in b if lam_T < u < v < lam_e]
        ts = sde.t_from_log_snr(torch.tensor(pairs, dtype=torch.float64).reshape(-1))
        ts = ts.reshape(-1, 2)
        one, end = torch.ones(1, dtype=torch.float64), torch.full((1,), eps, dtype=torch.float64)
        errs = [err(torch.cat([one, t, end])) for t in ts]
        i = int(np.argmin(errs))
        return pairs[i], errs[i], (a[1] - a[0], b[1] - b[0])

    (u, v), best, (da, db) = search(lam_T, lam_e, lam_T, lam_e, 28)
    (u, v), best, _ = search(u - da, u + da, v - db, v + db, 15)
    got = err(fit.t_grid)
    assert abs(got - best) <= 0.05 * best, (got, best, fit.t_grid.tolist())
    uniform = err(solvers.time_grid(sde, 3, "uniform", eps))
    assert best < 0.5 * uniform  # the grid matters here: the test can fail


def test_optimizer_is_seeded_reports_fresh_draws_and_beats_named_grids(tmp_path):
    sde, score = ring_setup(VESDE())
    kw = dict(solver="dpmpp_2m", nfe=5, shape=(2,), n_fit=64, n_eval=256, max_evals=120)
    a = solvers.optimize_grid(score, sde, seed=1, **kw)
    b = solvers.optimize_grid(score, sde, seed=1, **kw)
    c = solvers.optimize_grid(score, sde, seed=2, **kw)
    assert torch.equal(a.t_grid, b.t_grid) and a.error == b.error
    assert not torch.equal(a.t_grid, c.t_grid)
    assert a.steps == 5 and a.nfe == 5 and a.t_grid[0] == 1.0 and a.t_grid[-1] == sde.default_eps
    assert a.error < 0.7 * min(a.named_errors.values())
    # held-out: the fitting error is not the reported error, and a fresh batch confirms it
    assert a.fit_error != a.error
    x_T = sde.prior_sample((256, 2), generator=gen(123), dtype=torch.float64)
    ref = solvers.optimize.reference_solution(solvers.sample, score, sde, x_T, sde.default_eps, False)
    err = lambda g: float((solvers.sample(score, sde, x_T=x_T, solver="dpmpp_2m", grid=g).x - ref)  # noqa: E731
                          .pow(2).sum(1).mean().sqrt())
    assert err(a.t_grid) < 0.7 * min(err(solvers.time_grid(sde, 5, k, sde.default_eps)) for k in solvers.GRIDS)
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(a.to_json()))
    assert torch.equal(solvers.explicit_grid(sde, solvers.load_grid(str(path))), a.t_grid)


def test_optimizer_counts_nfe_per_solver_and_fits_denoise():
    sde, score = ring_setup()
    heun = solvers.optimize_grid(score, sde, solver="heun", nfe=7, shape=(2,), n_fit=32, n_eval=32, max_evals=10)
    used = solvers.sample(score, sde, x_T=torch.zeros(2, 2, dtype=torch.float64), solver="heun",
                          grid=heun.t_grid).nfe
    assert heun.nfe == used <= 7 and heun.steps == heun.t_grid.numel() - 1
    den = solvers.optimize_grid(score, sde, solver="dpmpp_2m", nfe=5, shape=(2,), denoise=True, n_fit=32,
                                n_eval=32, max_evals=10)
    assert den.steps == 4 and den.nfe == 5 and den.denoise


@pytest.mark.parametrize("kw, match", [
    (dict(solver="euler_maruyama"), "draws noise with these options; the pathwise objective fits"),
    (dict(solver="ddim", options={"eta": 1.0}), "draws noise"),
    (dict(solver="pf_ode"), "pf_ode with an adaptive method chooses its own steps"),
    (dict(solver="nope"), "unknown solver 'nope'"),
    (dict(nfe=0), "nfe must be an integer >= 1, got 0"),
    (dict(shape=None), r"give shape=\(D, ...\)"),
    (dict(init="cosine"), "unknown init grid 'cosine'"),
    (dict(solver="heun", nfe=1, eps=0.001), "needs more than nfe=1 evaluations"),
])
def test_optimizer_bad_input_is_named(kw, match):
    expect_optimizer_error(dict(solver="dpmpp_2m", nfe=3, shape=(2,), n_fit=8, n_eval=8, max_evals=2), kw, match)


def expect_optimizer_error(args, kw, match):
    sde, score = ring_setup()
    with pytest.raises(solvers.SolverError, match=match):
        solvers.optimize_grid(score, sde, **{**args, **kw})


# -- command line ---------------------------------------------------------------------------------
def test_schedule_then_sample_and_compare_with_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["schedule", "--sde", "ve", "--solver", "dpmpp_2m", "--nfe", "4", "--n-fit", "32",
                                 "--n-eval", "64", "--max-evals", "30", "--out", "g.json"])
    assert r.exit_code == 0, r.output
    saved = json.load(open("g.json"))
    assert saved["solver"] == "dpmpp_2m" and saved["nfe"] == 4 and len(saved["t_grid"]) == 5
    assert saved["sde"]["name"] == "ve" and "fitted" in r.output
    r = CliRunner().invoke(cli, ["sample", "--sde", "ve", "--solver", "dpmpp_2m", "--grid", "g.json", "--n", "20",
                                 "--quiet", "--out", "x.npz"])
    assert r.exit_code == 0 and "4 nfe" in r.output, r.output
    r = CliRunner().invoke(cli, ["compare", "--sde", "ve", "--solvers", "dpmpp_2m,ddim", "--grid", "g.json",
                                 "--n", "200", "--no-plots", "--quiet", "--out", "cmp"])
    assert r.exit_code == 0, r.output
    assert "best at <= 5 nfe: " in r.output and "g.json grid, 4 steps" in r.output
    r = CliRunner().invoke(cli, ["compare", "--solvers", "dpmpp_2m", "--steps", "3,8,16", "--n", "200",
                                 "--no-plots", "--quiet", "--out", "cmp2"])
    lines = [ln for ln in r.output.splitlines() if ln.startswith("best at")]
    assert [ln.split(":")[0] for ln in lines] == ["best at <= 5 nfe", "best at <= 10 nfe", "best at <= 20 nfe"]
    assert "3 steps, 3 nfe" in lines[0] and "8 steps, 8 nfe" in lines[1] and "16 steps" in lines[2]


@pytest.mark.parametrize("args, message", [
    (["sample", "--grid", "nothere.json"], "grid file 'nothere.json' does not exist"),
    (["compare", "--grid", "cosine"], "'cosine' is not one of 'tuned', 'uniform'"),
    (["sample", "--grid", "g.json", "--steps", "7"], "--steps 7 disagrees with --grid g.json, which has 2 steps"),
    (["compare", "--grid", "g.json", "--steps", "7"], "disagrees with --grid g.json"),
    (["schedule", "--out", "g.txt"], "must be a .json file"),
    (["schedule", "--solver", "euler_maruyama", "--nfe", "3"], "draws noise"),
])
def test_bad_grid_options_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.json").write_text(json.dumps([1.0, 0.3, 0.001]))
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


# -- the KL upper bound (objective="klub") ----------------------------------------------------------
def _gaussian_1d(sde, mu=0.5, c=0.3):
    data = GaussianMixture.gaussian(1, mean=torch.tensor([mu]), stds=torch.tensor([c]))
    return data, data.score_fn(sde)


def _exact_klub_terms(st, lo, mu, c):
    """Per-step KLUB of 1-D N(μ, c²) data by quadrature, from the joint law of the forward process:
    D(x̃, σ̃) = μ + κ(σ̃)(x̃ − μ), κ = c²/(σ̃² + c²); Var x̃_σ̃ = Cov(x̃_σ̃, x̃_b) = c² + σ̃², Var x̃_b = c² + b²."""
    from scipy.integrate import quad

    def integrand(s, b):
        ks, kb = c * c / (s * s + c * c), c * c / (b * b + c * c)
        return (ks * ks * (c * c + s * s) - 2 * ks * kb * (c * c + s * s) + kb * kb * (c * c + b * b)) / s ** 3

    return [quad(integrand, max(a, lo), b, args=(b,), epsabs=0, epsrel=1e-10, limit=200)[0] if b > lo else 0.0
            for b, a in zip(st[:-1], st[1:])]


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("grid, eps, c", [("edm", None, None), ("uniform", 0.0, 1.0)])
def test_klub_estimator_matches_quadrature_on_a_gaussian(sde, grid, eps, c):
    """The Monte Carlo KLUB (importance sampling over σ̃, the oracle's score) against quadrature of
    the exact expectation, step by step; c=1.0 makes the proposal mismatch the data (std 0.3), and
    eps=0 exercises the cut at σ̃_min.  Same-noise pairs (x̃_b = x_0 + b·z₁) would be off by 10-100 %."""
    from solvers.klub import KLUB, sigma_tilde

    mu, cd, K, n = 0.5, 0.3, 4, 20000
    data, score = _gaussian_1d(sde, mu, cd)
    g = gen(5)
    est = KLUB(score, sde, data.sample(K * n, generator=g, dtype=torch.float64).reshape(K, n, 1), generator=g, c=c)
    ts = solvers.time_grid(sde, K, grid, sde.default_eps if eps is None else eps)
    st = sigma_tilde(sde, ts).tolist()
    want = _exact_klub_terms(st, st[-1] if st[-1] > 0 else est.st_min, mu, cd)
    got = est.terms(ts).tolist()
    assert all(w > 0 for w in want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= 0.03 * b, (i, got, want)


def test_klub_bounds_the_kl_of_the_linearized_sampler():
    """KL(exact ‖ grid) ≤ KLUB, with the outputs' KL in closed form: for N(μ, c²) data the first-order
    sampler (DDPM with β̃ and noise on every step, the exact solution of the frozen-D SDE) keeps
    x̃ Gaussian, x̃' − μ = A(x̃ − μ) + a√(1−r)·z, r = a²/b², A = (1−r)κ(b) + r, from x̃_T ~ p_T."""
    from solvers.klub import KLUB, sigma_tilde

    sde, mu, cd, n = VPSDE(), 0.5, 0.3, 4000
    data, score = _gaussian_1d(sde, mu, cd)
    ratios = []
    for K, grid in [(2, "edm"), (3, "uniform"), (6, "quadratic"), (12, "logsnr")]:
        g = gen(K)
        est = KLUB(score, sde, data.sample(K * n, generator=g, dtype=torch.float64).reshape(K, n, 1), generator=g)
        ts = solvers.time_grid(sde, K, grid, sde.default_eps)
        st = sigma_tilde(sde, ts).tolist()
        var = cd ** 2 + st[0] ** 2
        for b, a in zip(st[:-1], st[1:]):
            r = (a / b) ** 2
            A = (1 - r) * cd ** 2 / (b * b + cd ** 2) + r
            var = A * A * var + a * a * (1 - r)
        v_exact = cd ** 2 + st[-1] ** 2
        kl = 0.5 * (v_exact / var - 1 - np.log(v_exact / var))
        ratios.append(kl / est(ts))
    assert max(ratios) <= 1 and max(ratios) > 0.2, ratios  # a bound, and not a vacuous one for 2 steps


def test_klub_fit_beats_the_named_grids_on_fresh_draws_and_is_seeded():
    from solvers.klub import KLUB

    sde = VPSDE()
    data = GaussianMixture.ring()
    score = data.score_fn(sde)
    kw = dict(solver="ddpm", nfe=6, objective="klub", n_fit=128, n_eval=512, max_evals=100)
    a = solvers.optimize_grid(score, sde, data=data.sample, shape=(2,), seed=3, **kw)
    b = solvers.optimize_grid(score, sde, data=data.sample, shape=(2,), seed=3, **kw)
    assert torch.equal(a.t_grid, b.t_grid) and a.klub == b.klub
    assert a.objective == "klub" and a.steps == 6 and a.t_grid[-1] == 0 and a.evaluations == 100
    assert set(a.named_klubs) == {"uniform", "quadratic"} and a.init_klub == a.named_klubs[a.init_grid]
    assert a.klub < 0.8 * min(a.named_klubs.values()) and a.fit_klub != a.klub
    # an independent estimator on other draws agrees
    g = gen(77)
    est = KLUB(score, sde, data.sample(6 * 2000, generator=g, dtype=torch.float64).reshape(6, 2000, 2), generator=g)
    assert est(a.t_grid) < 0.8 * min(est(solvers.time_grid(sde, 6, k, 0.0)) for k in ("uniform", "quadratic"))
    assert abs(est(a.t_grid) - a.klub) < 0.1 * a.klub
    # a tensor of samples works as data (fit and held-out halves), shape read off it
    c = solvers.optimize_grid(score, sde, data=data.sample(400, generator=gen(1)), seed=3, **kw)
    assert c.steps == 6 and c.klub < min(c.named_klubs.values())
    j = a.to_json()
    assert "klub" in j and "named_klubs" in j and "error" not in j and "named_errors" not in j


@pytest.mark.parametrize("kw, match", [
    (dict(objective="kl"), "objective must be one of 'pathwise', 'klub', got 'kl'"),
    (dict(objective="klub", data=None), "objective='klub' needs data="),
    (dict(objective="klub", data=lambda n: torch.zeros(n, 3)), r"data must give samples of shape \(n, 2\), got \(4"),
    (dict(objective="klub", data=torch.zeros(1, 2)), "data needs at least 2 samples"),
    (dict(data=torch.zeros(8, 2)), "data= and klub_t_min= belong to objective='klub'"),
])
def test_klub_bad_input_is_named(kw, match):
    expect_optimizer_error(dict(solver="ddpm", nfe=4, shape=(2,), n_fit=1, n_eval=1, max_evals=2), kw, match)


@pytest.mark.slow
@pytest.mark.parametrize("solver, nfe", [("ddpm", 10), ("ddpm", 20)])
def test_klub_grid_beats_the_default_grid_for_ddpm_on_the_ring(solver, nfe):
    """The distributional check: within-mode W2 + off-mode fraction (experiments/anchor_comparison's
    quality) of ddpm on the KLUB-fitted grid against its default grid, on fresh x_T and noise.
    (See experiments/klub_grids.py: the best named grid, quadratic, is not beaten at full budget.)"""
    from scoresde.evaluation.metrics import mode_metrics

    sde, data = VPSDE(), GaussianMixture.ring(8, 4.0, 0.2)
    score = data.score_fn(sde)
    fit = solvers.optimize_grid(score, sde, solver=solver, nfe=nfe, shape=(2,), objective="klub", data=data.sample)

    def quality(**grid):
        out = []
        for s in (21, 22):
            x = solvers.sample(score, sde, shape=(4000, 2), solver=solver, generator=gen(s), dtype=torch.float64,
                               **grid).x
            q = mode_metrics(x, data)
            out.append(q["mode_w2"] + q["off_mode"])
        return sum(out) / 2

    fitted, default = quality(grid=fit.t_grid), quality(steps=fit.steps)
    assert fitted < 0.85 * default, (fitted, default)


def test_schedule_klub_then_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["schedule", "--solver", "ddpm", "--nfe", "4", "--objective", "klub", "--n-fit", "32",
                                 "--n-eval", "64", "--max-evals", "20", "--out", "k.json"])
    assert r.exit_code == 0, r.output
    saved = json.load(open("k.json"))
    assert saved["objective"] == "klub" and saved["solver"] == "ddpm" and len(saved["t_grid"]) == 5
    assert saved["klub"] > 0 and set(saved["named_klubs"]) == {"uniform", "quadratic"} and "error" not in saved
    assert "KL upper bound on 64 fresh draws per step: fitted" in r.output
    r = CliRunner().invoke(cli, ["sample", "--solver", "ddpm", "--grid", "k.json", "--n", "20", "--quiet",
                                 "--out", "x.npz"])
    assert r.exit_code == 0 and "4 nfe" in r.output, r.output

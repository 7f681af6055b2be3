"""Float64 path-by-path cross-checks: each solver against its paper's algorithm box, transcribed
here line by line with the SDE's closed forms written out (no solvers code, no SDE methods),
from the same x_T and the same noise draws."""

import math

import pytest
import torch

import solvers
from conftest import SDE_FACTORIES, gen
from scoresde.oracle import GaussianMixture

DATA = GaussianMixture.ring()
BMIN, BMAX, SMIN, SMAX = 0.1, 20.0, 0.01, 50.0  # the defaults of VPSDE / SubVPSDE / VESDE


def closed_form(name):
    """(m(t), σ(t), t(σ̃)) for the default SDEs, as plain float functions."""
    if name == "ve":
        return (lambda t: 1.0, lambda t: SMIN * (SMAX / SMIN) ** t,
                lambda st: math.log(st / SMIN) / math.log(SMAX / SMIN))
    logm = lambda t: -0.25 * t * t * (BMAX - BMIN) - 0.5 * t * BMIN  # noqa: E731
    m = lambda t: math.exp(logm(t))  # noqa: E731
    if name == "vp":  # σ̃² = e^{½β_d t² + β_min t} − 1, a quadratic in t
        inv = lambda st: (-BMIN + math.sqrt(BMIN ** 2 + 2 * (BMAX - BMIN) * math.log1p(st * st))) / (BMAX - BMIN)  # noqa: E731,E501
        return m, lambda t: math.sqrt(-math.expm1(2 * logm(t))), inv
    return m, lambda t: -math.expm1(2 * logm(t)), None  # sub-VP


def denoiser(sde, name):
    """EDM's D(x̃; σ̃) for x̃ = x/m: x̂_0 = (x + σ²s(x, t))/m at x = m·x̃, t = t(σ̃)."""
    m, sigma, t_of = closed_form(name)

    def D(xt, st, t=None):
        t = t_of(st) if t is None else t
        x = m(t) * xt
        s = DATA.score(x, torch.full((x.shape[0],), t, dtype=x.dtype), sde)
        return (x + sigma(t) ** 2 * s) / m(t)
    return D


def edm_algorithm_2(D, ts, sig, x0, second_order=True, S_churn=0.0, S_tmin=0.0, S_tmax=math.inf,
                    S_noise=1.0, generator=None):
    """Karras et al. 2022, Algorithm 2 (Algorithm 1 when S_churn = 0), with σ(t) = t, s(t) = 1 on
    x̃; `ts`/`sig` are the grid times and noise levels σ̃_i.  Two documented choices of ours:
    σ̂ is capped at σ̃_0 (no score beyond T) and ε is drawn only on churned steps."""
    N = len(sig) - 1
    x = x0
    for i in range(N):
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_tmin <= sig[i] <= S_tmax and i > 0 else 0.0
        t_hat = min(sig[i] + gamma * sig[i], sig[0])
        if t_hat > sig[i]:
            eps = S_noise * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x_hat = x + math.sqrt(t_hat ** 2 - sig[i] ** 2) * eps
            d = (x_hat - D(x_hat, t_hat)) / t_hat
        else:
            x_hat = x
            d = (x_hat - D(x_hat, sig[i], ts[i])) / sig[i]
        x_next = x_hat + (sig[i + 1] - t_hat) * d
        if second_order and sig[i + 1] != 0:
            d2 = (x_next - D(x_next, sig[i + 1], ts[i + 1])) / sig[i + 1]
            x_next = x_hat + (sig[i + 1] - t_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("solver, grid, eps", [("heun", "edm", None), ("heun", "uniform", 0.0),
                                               ("euler", "edm", None), ("euler", "quadratic", None)])
def test_edm_heun_and_euler_are_algorithm_1(sde_name, solver, grid, eps):
    sde = SDE_FACTORIES[sde_name]()
    if eps == 0.0 and sde_name == "ve":
        eps = None  # VE's σ(0) = σ_min > 0: there is no σ = 0 end to test
    m, sigma, _ = closed_form(sde_name)
    xT = sde.prior_sample((256, 2), generator=gen(0), dtype=torch.float64)
    res = solvers.sample(DATA.score_fn(sde), sde, x_T=xT, solver=solver, steps=8, grid=grid, eps=eps)
    ts = res.t_grid.tolist()
    sig = [sigma(t) / m(t) for t in ts]
    ref = m(ts[-1]) * edm_algorithm_2(denoiser(sde, sde_name), ts, sig, xT / m(ts[0]), solver == "heun")
    assert res.nfe == (16 - (sig[-1] == 0) if solver == "heun" else 8)
    assert (res.x - ref).abs().max() <= 1e-10


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_edm_churn_is_algorithm_2(sde_name, solver):
    sde = SDE_FACTORIES[sde_name]()
    m, sigma, _ = closed_form(sde_name)
    xT = sde.prior_sample((256, 2), generator=gen(0), dtype=torch.float64)
    churn = dict(S_churn=40.0, S_tmin=0.05, S_tmax=30.0, S_noise=1.003)
    res = solvers.sample(DATA.score_fn(sde), sde, x_T=xT, solver=solver, steps=10, generator=gen(5), **churn)
    ts = res.t_grid.tolist()
    sig = [sigma(t) / m(t) for t in ts]
    ref = m(ts[-1]) * edm_algorithm_2(denoiser(sde, sde_name), ts, sig, xT / m(ts[0]), solver == "heun",
                                      generator=gen(5), **churn)
    assert (res.x - ref).abs().max() <= 1e-10
    plain = solvers.sample(DATA.score_fn(sde), sde, x_T=xT, solver=solver, steps=10).x
    assert (res.x - plain).abs().max() > 1e-3  # the churn did act


def test_churn_never_evaluates_the_score_beyond_T():
    sde = SDE_FACTORIES["vp"]()
    seen = []

    def score_fn(x, t):
        seen.append(t.max().item())
        return DATA.score(x, t, sde)
    solvers.sample(score_fn, sde, shape=(8, 2), solver="heun", steps=6, generator=gen(0), S_churn=100.0)
    assert max(seen) <= sde.T + 1e-12


def dpm_solver_pp_2m(sde_name, sde, ts, x, lower_order_final):
    """Lu et al. 2022b, Algorithm 2 (DPM-Solver++(2M)), with α_t = m(t), λ = log(α/σ) and the
    data prediction x_θ = (x + σ²s)/α; the final step uses x_θ(t_{M−1}) alone when it lands on
    σ = 0, or when lower_order_final and M < 15 (our measured rule)."""
    alpha, sigma, _ = closed_form(sde_name)
    lam = lambda t: math.log(alpha(t) / sigma(t)) if sigma(t) > 0 else math.inf  # noqa: E731

    def x_theta(x, t):
        s = DATA.score(x, torch.full((x.shape[0],), t, dtype=x.dtype), sde)
        return (x + sigma(t) ** 2 * s) / alpha(t)

    M = len(ts) - 1
    Q = [x_theta(x, ts[0])]
    h1 = lam(ts[1]) - lam(ts[0])
    x = sigma(ts[1]) / sigma(ts[0]) * x - alpha(ts[1]) * math.expm1(-h1) * Q[-1]
    for i in range(2, M + 1):
        Q.append(x_theta(x, ts[i - 1]))
        h_i, h_prev = lam(ts[i]) - lam(ts[i - 1]), lam(ts[i - 1]) - lam(ts[i - 2])
        r = h_prev / h_i
        if i == M and (sigma(ts[i]) == 0 or (lower_order_final and M < 15)):
            D = Q[-1]
        else:
            D = (1 + 1 / (2 * r)) * Q[-1] - 1 / (2 * r) * Q[-2]
        x = sigma(ts[i]) / sigma(ts[i - 1]) * x - alpha(ts[i]) * math.expm1(-h_i) * D
    return x


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("steps, grid, lof", [(10, "logsnr", True), (10, "quadratic", False),
                                              (20, "edm", True), (6, "uniform", True)])
def test_dpmpp_2m_is_dpm_solver_pp_algorithm(sde_name, steps, grid, lof):
    sde = SDE_FACTORIES[sde_name]()
    xT = sde.prior_sample((256, 2), generator=gen(0), dtype=torch.float64)
    res = solvers.sample(DATA.score_fn(sde), sde, x_T=xT, solver="dpmpp_2m", steps=steps, grid=grid,
                         lower_order_final=lof)
    ref = dpm_solver_pp_2m(sde_name, sde, res.t_grid.tolist(), xT, lof)
    assert (res.x - ref).abs().max() <= 1e-10


def test_dpmpp_2m_lands_on_zero_noise_with_a_first_order_step():
    sde = SDE_FACTORIES["vp"]()
    xT = sde.prior_sample((64, 2), generator=gen(0), dtype=torch.float64)
    res = solvers.sample(DATA.score_fn(sde), sde, x_T=xT, solver="dpmpp_2m", steps=20, grid="uniform", eps=0.0,
                         lower_order_final=False)
    ref = dpm_solver_pp_2m("vp", sde, res.t_grid.tolist(), xT, False)
    assert torch.isfinite(res.x).all() and (res.x - ref).abs().max() <= 1e-10


# -- the discrete / continuous schedule of ddpm and ddim is a visible choice ------------------------
@pytest.mark.parametrize("solver", ["ddpm", "ddim"])
def test_schedule_is_explicit_and_reported(solver):
    sde = SDE_FACTORIES["vp"]()
    xT = sde.prior_sample((64, 2), generator=gen(0), dtype=torch.float64)
    run = lambda **kw: solvers.sample(DATA.score_fn(sde), sde, x_T=xT, solver=solver,  # noqa: E731
                                      generator=gen(1), **kw)
    # 10 steps to t = 0 sit on the 1/N lattice and 9 do not: the default is continuous for both
    for steps in (9, 10):
        assert run(steps=steps).schedule == "continuous"
    cont, disc = run(steps=10), run(steps=10, schedule="discrete")
    assert disc.schedule == "discrete" and (cont.x - disc.x).abs().max() > 1e-4
    with pytest.raises(solvers.SolverError, match=r"1/N lattice \(N=1000\); t_1=0\.888889 is not"):
        run(steps=9, schedule="discrete")
    with pytest.raises(solvers.SolverError, match="schedule must be 'continuous' or 'discrete', got 'ddpm'"):
        run(steps=10, schedule="ddpm")


def test_discrete_schedule_needs_vp():
    sde = SDE_FACTORIES["ve"]()
    with pytest.raises(solvers.SolverError, match="schedule='discrete' needs a VPSDE"):
        solvers.sample(DATA.score_fn(sde), sde, shape=(4, 2), solver="ddim", steps=10, schedule="discrete")


def test_compare_rows_report_the_schedule():
    from scoresde.evaluation.compare import run_compare
    from scoresde.evaluation.resolve import resolve_model
    model = resolve_model("oracle:gmm8", sde=SDE_FACTORIES["vp"]())
    rows, _ = run_compare(model, ["ddim", "heun"], [4], n=64, progress=False,
                          options={"ddim": {"schedule": "discrete"}})
    assert [r["schedule"] for r in rows] == ["discrete", "continuous"]


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_ddim_is_edm_euler(sde_name):
    """DDIM (η = 0) is Euler in σ̃ on x̃ = x/m: x̃_s = x̂_0 + σ̃_s·ε̂ = x̃_t + (σ̃_s − σ̃_t)·ε̂."""
    sde = SDE_FACTORIES[sde_name]()
    xT = sde.prior_sample((256, 2), generator=gen(0), dtype=torch.float64)
    kw = dict(x_T=xT, steps=12, grid="edm", eps=sde.default_eps)
    a = solvers.sample(DATA.score_fn(sde), sde, solver="ddim", **kw).x
    b = solvers.sample(DATA.score_fn(sde), sde, solver="euler", **kw).x
    assert (a - b).abs().max() <= 1e-10


@pytest.mark.parametrize("solver", ["heun_t", "euler_t"])
def test_t_stepping_methods_are_heun_and_euler_in_t(solver):
    """Heun's and Euler's method on dx/dt = −½β(t)x − ½β(t)s(x, t) (VP), written out."""
    sde = SDE_FACTORIES["vp"]()
    beta = lambda t: BMIN + t * (BMAX - BMIN)  # noqa: E731

    def v(x, t):
        return -0.5 * beta(t) * x - 0.5 * beta(t) * DATA.score(x, torch.full((x.shape[0],), t, dtype=x.dtype), sde)
    xT = sde.prior_sample((256, 2), generator=gen(0), dtype=torch.float64)
    res = solvers.sample(DATA.score_fn(sde), sde, x_T=xT, solver=solver, steps=9, grid="quadratic")
    ts, x = res.t_grid.tolist(), xT
    for t, s in zip(ts[:-1], ts[1:]):
        d = v(x, t)
        x_e = x + (s - t) * d
        x = x + (s - t) * 0.5 * (d + v(x_e, s)) if solver == "heun_t" else x_e
    assert (res.x - x).abs().max() <= 1e-10

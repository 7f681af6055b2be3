"""Solvers against the DDPM algorithm written out, closed-form flows and the ring (orders: test_solvers_orders.py)."""

import pytest
import torch

import solvers
from conftest import SDE_FACTORIES, gen
from scoresde import VPSDE
from scoresde.evaluation.metrics import mode_metrics, sliced_w2
from scoresde.oracle import GaussianMixture


def eps_net(x, i):
    """A fixed, nonlinear stand-in for a trained ε-network with integer time labels."""
    return torch.tanh(x) * (i[:, None] / 1000.0) + 0.1 * torch.sin(3 * x)


# -- DDPM as a special case -----------------------------------------------------------------------
@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_reproduces_algorithm_2(variance):
    sde = VPSDE(0.1, 20.0, N=1000)

    def score_fn(x, t):  # what ScoreModel does: s = −ε(x, label)/σ(t)
        return -eps_net(x, torch.round(t * 1000)) / sde.marginal(t)[1][:, None]

    xT = torch.randn(64, 3, generator=gen(0), dtype=torch.float64)
    res = solvers.sample(score_fn, sde, x_T=xT, solver="ddpm", steps=1000, generator=gen(1), variance=variance,
                         schedule="discrete")

    # DDPM Algorithm 2, line by line, with the same noise draws.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    g, x = gen(1), xT.clone()
    for t in range(1000, 0, -1):
        a, ab, b = alphas[t - 1], abar[t - 1], betas[t - 1]
        ab_prev = abar[t - 2] if t > 1 else torch.tensor(1.0, dtype=torch.float64)
        sigma = torch.sqrt((1 - ab_prev) / (1 - ab) * b) if variance == "beta_tilde" else torch.sqrt(b)
        eps = eps_net(x, torch.full((64,), float(t), dtype=torch.float64))
        mean = (x - (1 - a) / torch.sqrt(1 - ab) * eps) / torch.sqrt(a)
        x = mean + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64) if t > 1 else mean
    assert res.nfe == 1000
    assert torch.allclose(res.x, x, rtol=1e-10, atol=1e-10)


def test_ddim_eta_one_is_ddpm():
    sde, data = VPSDE(), GaussianMixture.ring()
    xT = torch.randn(32, 2, generator=gen(0), dtype=torch.float64)
    kw = dict(x_T=xT, steps=30, grid="quadratic", eps=1e-3)
    a = solvers.sample(data.score_fn(sde), sde, solver="ddpm", generator=gen(2), **kw)
    b = solvers.sample(data.score_fn(sde), sde, solver="ddim", eta=1.0, generator=gen(2), **kw)
    assert torch.allclose(a.x, b.x, atol=1e-10)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_adaptive_ode_meets_tolerance(sde_name):
    sde = SDE_FACTORIES[sde_name]()
    data = GaussianMixture.gaussian(4)
    xT = sde.prior_sample((64, 4), generator=gen(0), dtype=torch.float64)
    truth = data.flow(xT, sde.T, sde.default_eps, sde)
    scale = 1 + truth.abs().max().item()
    errs, nfes = [], []
    for tol in (1e-4, 1e-6, 1e-8):
        res = solvers.sample(data.score_fn(sde), sde, x_T=xT, solver="pf_ode", rtol=tol, atol=tol)
        errs.append((res.x - truth).abs().max().item())
        nfes.append(res.nfe)
        assert errs[-1] < 30 * tol * scale, f"rtol={tol}: global error {errs[-1]:.3g}"
    assert errs[0] > errs[1] > errs[2] and nfes[0] < nfes[1] < nfes[2]


@pytest.mark.parametrize("solver", solvers.available())
def test_score_is_never_evaluated_outside_the_grid(solver):
    """Adaptive ODE steppers overshoot the end time unless told not to; a network at t < 0 sees σ = 0."""
    sde, data = VPSDE(), GaussianMixture.ring()
    eps = 1e-3 if solver not in ("ddpm", "ddim") else 0.0
    seen = []

    def score_fn(x, t):
        seen.append((t.min().item(), t.max().item()))
        return data.score(x, t, sde)

    solvers.sample(score_fn, sde, shape=(16, 2), solver=solver, steps=7, eps=eps, generator=gen(0))
    assert min(lo for lo, _ in seen) >= eps - 1e-12 and max(hi for _, hi in seen) <= sde.T + 1e-12


def test_likelihood_never_evaluates_past_T():
    from scoresde.likelihood import log_likelihood
    sde, data = VPSDE(), GaussianMixture.ring()
    seen = []

    def score_fn(x, t):
        seen.append(t.max().item())
        return data.score(x, t, sde)

    log_likelihood(score_fn, sde, data.sample(8, generator=gen(1), dtype=torch.float64))
    assert max(seen) <= sde.T + 1e-12


# -- every solver × every SDE on the ring ------------------------------------------------------------
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("solver", solvers.available())
def test_ring_quality_at_many_steps(sde_name, solver):
    sde, data = SDE_FACTORIES[sde_name](), GaussianMixture.ring()
    steps = 1000 if solver == "ddpm" else 500
    res = solvers.sample(data.score_fn(sde), sde, shape=(3000, 2), solver=solver, steps=steps, generator=gen(1))
    q = mode_metrics(res.x, data)
    assert abs(q["std_ratio"] - 1) < 0.045, q
    assert q["off_mode"] < 0.003, q
    assert q["mode_tv"] < 0.05, q


def test_torchsde_agrees_with_native_euler_maruyama():
    sde, data = VPSDE(), GaussianMixture.ring()
    kw = dict(shape=(20000, 2), steps=100)
    a = solvers.sample(data.score_fn(sde), sde, solver="euler_maruyama", generator=gen(3), noise_last=True, **kw).x
    b = solvers.sample(data.score_fn(sde), sde, solver="torchsde", generator=gen(4), **kw).x
    qa, qb = mode_metrics(a, data), mode_metrics(b, data)
    assert abs(qa["std_ratio"] - qb["std_ratio"]) < 0.02
    ref = data.sample(20000, generator=gen(5))
    floor = sliced_w2(ref, data.sample(20000, generator=gen(6)), generator=gen(7))
    assert sliced_w2(a, b, generator=gen(7)) < 2.5 * floor


@pytest.mark.slow
def test_torchsde_runs_tens_of_thousands_of_steps():
    """Without the dt hint torchsde's Brownian interval tree grew a level per step and raised
    RecursionError between 10^4 and 3·10^4 steps; 30 000 steps now run (about 10 s)."""
    sde, data = VPSDE(), GaussianMixture.ring()
    res = solvers.sample(data.score_fn(sde), sde, shape=(64, 2), solver="torchsde", steps=30000, generator=gen(9))
    assert torch.isfinite(res.x).all() and abs(res.nfe - 30000) <= 10  # sdeint's own float32 time stepping
    assert mode_metrics(res.x, data)["off_mode"] < 0.05


@pytest.mark.parametrize("method", ["milstein", "srk", "euler_heun", "midpoint"])
def test_torchsde_methods_run(method):
    sde, data = VPSDE(), GaussianMixture.ring()
    res = solvers.sample(data.score_fn(sde), sde, shape=(2000, 2), solver="torchsde", steps=200,
                         generator=gen(8), method=method)
    assert abs(mode_metrics(res.x, data)["std_ratio"] - 1) < 0.08


# -- the shared interface ------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", solvers.available())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interface_shapes_dtype_reproducibility(solver, dtype):
    sde, data = VPSDE(), GaussianMixture.gaussian(16)
    seen = []
    kw = dict(shape=(8, 1, 4, 4), solver=solver, steps=6, dtype=dtype, callback=seen.append)
    a = solvers.sample(data.score_fn(sde), sde, generator=gen(9), **kw)
    b = solvers.sample(data.score_fn(sde), sde, generator=gen(9), **kw)
    assert a.x.shape == (8, 1, 4, 4) and a.x.dtype == dtype
    assert torch.equal(a.x, b.x)
    assert a.t_grid[0] == sde.T and a.t_grid.numel() == 7
    assert len(seen) >= 1 and all(torch.is_tensor(c["x"]) for c in seen)


@pytest.mark.parametrize("solver, nfe", [("ddpm", 10), ("ddim", 10), ("euler_maruyama", 10), ("euler", 10),
                                          ("heun", 20), ("euler_t", 10), ("heun_t", 20), ("dpmpp_2m", 10),
                                          ("pc", 20)])
def test_nfe_counts(solver, nfe, device):
    sde, data = VPSDE(), GaussianMixture.ring()
    res = solvers.sample(data.score_fn(sde), sde, shape=(4, 2), solver=solver, steps=10, generator=gen(0),
                         device=device)
    assert res.nfe == nfe and res.x.device.type == device.type
    if solver not in ("ddpm", "ddim"):
        assert solvers.sample(data.score_fn(sde), sde, shape=(4, 2), solver=solver, steps=10,
                              generator=gen(0), denoise=True, device=device).nfe == nfe + 1


def test_heun_landing_on_zero_noise_uses_euler_last_step():
    sde, data = VPSDE(), GaussianMixture.ring()
    res = solvers.sample(data.score_fn(sde), sde, shape=(4, 2), solver="heun", steps=10, grid="uniform",
                         eps=0.0, generator=gen(0))
    assert res.nfe == 19 and torch.isfinite(res.x).all()


def test_grids_are_decreasing_and_hit_the_ends(any_sde):
    for kind in solvers.GRIDS:
        ts = solvers.time_grid(any_sde, 12, kind, eps=1e-3)
        assert ts[0] == any_sde.T and ts[-1] == 1e-3 and (ts[1:] < ts[:-1]).all()
    lam = any_sde.log_snr(solvers.time_grid(any_sde, 12, "logsnr", eps=1e-3))
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(12), rtol=1e-6)


def test_denoise_is_tweedie():
    sde, data = VPSDE(), GaussianMixture.gaussian(3)
    xT = torch.randn(16, 3, generator=gen(0), dtype=torch.float64)
    plain = solvers.sample(data.score_fn(sde), sde, x_T=xT, solver="heun", steps=5).x
    den = solvers.sample(data.score_fn(sde), sde, x_T=xT, solver="heun", steps=5, denoise=True).x
    m, s = sde.marginal(torch.tensor([1e-3], dtype=torch.float64))
    assert torch.allclose(den, (plain + s ** 2 * data.score(plain, 1e-3, sde)) / m)


# -- validation ---------------------------------------------------------------------------------------
def _sample(**kw):
    sde, data = VPSDE(), GaussianMixture.ring()
    args = dict(shape=(4, 2), solver="heun", steps=5)
    args.update(kw)
    score_fn = args.pop("score_fn", data.score_fn(sde))
    return solvers.sample(score_fn, sde, **args)


@pytest.mark.parametrize("kw, match", [
    (dict(solver="rk45"), r"unknown solver 'rk45'; choose one of: ddpm, ddim, euler_maruyama"),
    (dict(steps=0), "steps must be an integer >= 1, got 0"),
    (dict(steps=2.5), "steps must be an integer >= 1, got 2.5"),
    (dict(grid="cosine"), "unknown time grid 'cosine'; choose one of: tuned, uniform"),
    (dict(eps=1.5), r"eps must satisfy 0 <= eps < T"),
    (dict(solver="euler", grid="logsnr", eps=0.0), "needs a finite log-SNR at eps"),
    (dict(shape=None), r"give either shape=\(B, ...\) or x_T"),
    (dict(eta=0.5), "unknown option\\(s\\) 'eta' for solver 'heun'"),
    (dict(solver="pf_ode", method="rk45"), "unknown torchdiffeq method 'rk45'"),
    (dict(solver="torchsde", method="foo"), "unknown torchsde method 'foo'"),
    (dict(solver="torchsde", method="reversible_heun"), "unstable on the stiff"),
    (dict(solver="ddpm", variance="small"), "variance must be 'beta_tilde' or 'beta', got 'small'"),
    (dict(solver="ddim", eta=-1.0), "eta must be >= 0, got -1.0"),
    (dict(solver="dpmpp_2m_sde", solver_type="rk"), "solver_type must be 'midpoint' or 'heun', got 'rk'"),
    (dict(solver="pc", snr=0.0), "snr must be > 0, got 0.0"),
    (dict(S_churn=-1.0), "S_churn and S_noise must be >= 0, got -1.0, 1.0"),
    (dict(solver="unipc", order=4), "order must be 1, 2 or 3, got 4"),
    (dict(solver="unipc", variant="bh3"), "variant must be 'bh1' or 'bh2', got 'bh3'"),
    (dict(solver="deis", order=0), "order must be 1, 2 or 3, got 0"),
    (dict(score_fn=lambda x, t: x[:, :1]), r"score_fn returned shape \(4, 1\), expected \(4, 2\)"),
    (dict(score_fn=lambda x, t: torch.where(t[:, None] < 0.5, float("nan"), 1.0) * x),
     r"score_fn returned NaN or inf at step \d+ \(t=0\.\d+"),
])
def test_bad_input_is_named(kw, match):
    with pytest.raises(solvers.SolverError, match=match):
        _sample(**kw)


def test_ode_step_underflow_is_a_clear_error(monkeypatch):
    import torchdiffeq  # pf_ode imports odeint from it when called

    def failing_odeint(*a, **kw):
        raise AssertionError("underflow in dt 0.0")

    monkeypatch.setattr(torchdiffeq, "odeint", failing_odeint)
    with pytest.raises(solvers.SolverError, match="the ODE solve failed.*underflow in dt.*raise rtol/atol or eps"):
        _sample(solver="pf_ode")


def test_deferred_nonfinite_check_reports_the_first_bad_step():
    """The accelerator path: no sync per step, the first bad step is raised after the solve."""
    from solvers._common import Problem
    sde = VPSDE()
    ts = solvers.time_grid(sde, 6, "uniform", eps=1e-3)
    x = torch.ones(4, 2)
    prob = Problem(lambda x, t: x * (float("inf") if prob.step >= 2 else 1.0), sde, ts, x, None, None)
    prob.eager_check = False
    for i in range(6):
        prob.step = i
        prob.score(x, prob.t[i])  # no exception during the solve
    with pytest.raises(solvers.SolverError, match=r"NaN or inf at step 2 \(t=0\.66"):
        prob.check_deferred()

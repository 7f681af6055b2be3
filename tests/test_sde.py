"""The SDE library against closed forms, the seeds' worked examples and simulation."""
import math

import numpy as np
import pytest
import torch

from conftest import SDE_FACTORIES, gen
from scoresde import SubVPSDE
from scoresde import VESDE
from scoresde import VPSDE
from scoresde import DiscreteVPSDE
from scoresde import eps_to_score
from scoresde import score_to_eps
from scoresde import x0_from_eps
from scoresde import x0_from_score
from scoresde import sde_from_config


# -- the discrete DDPM chain --------------------------------------------------------------------
def test_discrete_betas_are_ddpm_linspace():
    sde = VPSDE(0.1, 20.0, N=1000)
    assert torch.allclose(sde.discrete_betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(sde.alphas_cumprod, torch.cumprod(1 - sde.discrete_betas, 0))


def test_continuous_mean_coef_tracks_discrete_alpha_bar():
    sde = VPSDE(0.1, 20.0, N=1000)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    m, _ = sde.marginal(t)
    assert (m ** 2 - sde.alphas_cumprod).abs().max() < 2e-3
    # and relative accuracy where the signal is still large
    big = sde.alphas_cumprod > 0.1
    assert ((m ** 2 / sde.alphas_cumprod)[big] - 1).abs().max() < 0.02


def test_stepwise_forward_chain_matches_closed_form():
    """x_t = √(1−β_t)x_{t−1} + √β_t ε, step by step, has mean √ᾱ_t x_0 and variance 1−ᾱ_t."""
    sde = VPSDE(N=1000)
    n, x0, g = 200_000, 1.5, gen(1)
    x = torch.full((n,), x0, dtype=torch.float64)
    betas = sde.discrete_betas
    for i in range(300):
        x = torch.sqrt(1 - betas[i]) * x + torch.sqrt(betas[i]) * torch.randn(n, generator=g, dtype=torch.float64)
    abar = sde.alphas_cumprod[299]
    mean, var = math.sqrt(abar) * x0, 1 - abar
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / n)
    assert abs(x.var() - var) < 5 * var * math.sqrt(2 / n)


# -- the seeds' worked examples -----------------------------------------------------------------
def _vp_time_with_alpha_bar(sde, abar: float) -> torch.Tensor:
    """The t where m(t)² = ᾱ, from log-SNR λ = ½ log(ᾱ/(1 − ᾱ))."""
    return sde.t_from_log_snr(torch.tensor([0.5 * math.log(abar / (1 - abar))], dtype=torch.float64))


def test_worked_example_forward_sample(monkeypatch):
    """x_t = √ᾱ·x_0 + √(1−ᾱ)·ε with ᾱ = 0.81, x_0 = 2, ε = −0.5: 0.9·2 − 0.5·√0.19 ≈ 1.582055."""
    import scoresde.sde

    sde = VPSDE()
    t = _vp_time_with_alpha_bar(sde, 0.81)
    def noise(shape, generator, dtype, device):  # the worked example's ε
        return torch.full(shape, -0.5, dtype=dtype)

    monkeypatch.setattr(scoresde.sde._rng, "randn", noise)
    xt, z = sde.marginal_sample(torch.tensor([[2.0]], dtype=torch.float64), t)
    assert z.item() == -0.5
    assert xt.item() == pytest.approx(1.582055, abs=1e-6)


def test_worked_example_x0_recovery():
    x = torch.tensor([[1.2, -0.3]], dtype=torch.float64)
    eps = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    x0 = x0_from_eps(x, eps, math.sqrt(0.36), math.sqrt(0.64))
    assert torch.allclose(x0, torch.tensor([[4 / 3, 5 / 6]], dtype=torch.float64))
    # the score route gives the same clean estimate (Tweedie)
    s = eps_to_score(eps, math.sqrt(0.64))
    assert torch.allclose(x0_from_score(x, s, math.sqrt(0.36), math.sqrt(0.64)), x0)
    assert torch.allclose(score_to_eps(s, math.sqrt(0.64)), eps)


def test_worked_example_reverse_mean():
    """One ddpm step from ᾱ_t = 0.5 to ᾱ_s = ᾱ_t/α_t (α_t = 0.9) with ε̂ = 0.2 at x_t = 0.7 lands
    on μ = (x_t − β_t/√(1−ᾱ_t)·ε)/√α_t ≈ 0.7081 (the last step adds no noise)."""
    import solvers

    probe = VPSDE()
    t_start, t_end = float(_vp_time_with_alpha_bar(probe, 0.5)), float(_vp_time_with_alpha_bar(probe, 0.5 / 0.9))
    sde = VPSDE(T=t_start)  # the explicit grid starts at T

    def score(x, t):  # ε̂ = 0.2 everywhere: s = −ε̂/σ(t)
        return -0.2 / sde.std(t.to(torch.float64)).to(x.dtype)[:, None] * torch.ones_like(x)

    res = solvers.sample(score, sde, x_T=torch.tensor([[0.7]], dtype=torch.float64), solver="ddpm",
                         grid=[t_start, t_end])
    assert res.nfe == 1
    assert res.x.item() == pytest.approx(0.7081, abs=5e-5)
    # the hand computation to more digits, and the posterior-mean form in x̂_0 of the same step
    mu = (0.7 - 0.1 / math.sqrt(0.5) * 0.2) / math.sqrt(0.9)
    x0 = (0.7 - math.sqrt(0.5) * 0.2) / math.sqrt(0.5)
    abar_prev = 0.5 / 0.9
    mu2 = (math.sqrt(0.9) * (1 - abar_prev) * 0.7 + math.sqrt(abar_prev) * 0.1 * x0) / 0.5
    assert res.x.item() == pytest.approx(mu, abs=1e-9) and mu2 == pytest.approx(mu, abs=1e-12)


# -- the formulas, against independent computations ---------------------------------------------
# m(t) and σ(t) written out from the papers' formulas, with the default parameters.
def _linear_log_m(t):
    return -0.25 * t ** 2 * (20.0 - 0.1) - 0.5 * t * 0.1


def _cosine_log_m(t, s=0.008):
    return torch.log(torch.cos((t + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2))


def _discrete_cosine_log_m(t, N=500):
    # ᾱ_k = ∏ (1 − β_j) with iDDPM's capped cosine β_j, log ᾱ between the k/N scipy's monotone cubic
    from scipy.interpolate import PchipInterpolator

    abar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    la = [0.0]
    for k in range(1, N + 1):
        la.append(la[-1] + math.log(1 - min(1 - abar(k / N) / abar((k - 1) / N), 0.999)))
    return 0.5 * torch.as_tensor(PchipInterpolator(np.arange(N + 1) / N, la)(t.numpy()), dtype=torch.float64)


HAND_MARGINALS = {  # name -> (log m(t), σ(t))
    "vp": (_linear_log_m, lambda t: torch.sqrt(1 - torch.exp(2 * _linear_log_m(t)))),
    "vp-cosine": (_cosine_log_m, lambda t: torch.sqrt(1 - torch.exp(2 * _cosine_log_m(t)))),
    "subvp": (_linear_log_m, lambda t: 1 - torch.exp(2 * _linear_log_m(t))),
    "ve": (lambda t: 0 * t, lambda t: 0.01 * (50 / 0.01) ** t),
    "vp-discrete": (_discrete_cosine_log_m, lambda t: torch.sqrt(1 - torch.exp(2 * _discrete_cosine_log_m(t)))),
}


@pytest.mark.parametrize("name", list(SDE_FACTORIES))
def test_public_coefficients_match_closed_forms(name):
    """log_mean_coef and std equal the hand-written m(t), σ(t); drift_coef equals d log m/dt and
    g2 equals dσ²/dt − 2fσ², both from central differences of the hand-written forms."""
    sde, (log_m, std) = SDE_FACTORIES[name](), HAND_MARGINALS[name]
    # at least 0.2/500 off the 1/500 lattice, where the discrete table's β(t) has a kink
    t = torch.linspace(0.0135, 0.9856, 37, dtype=torch.float64)
    h = 1e-5
    f = (log_m(t + h) - log_m(t - h)) / (2 * h)
    g2 = (std(t + h) ** 2 - std(t - h) ** 2) / (2 * h) - 2 * f * std(t) ** 2
    torch.testing.assert_close(sde.log_mean_coef(t), log_m(t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sde.std(t), std(t), rtol=1e-12, atol=1e-12)
    # central differences are good to ~h²·(third derivative): 1e-6 relative near the cosine schedule's T
    torch.testing.assert_close(sde.drift_coef(t), f, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sde.g2(t), g2, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sde.log_snr(t), log_m(t) - torch.log(std(t)), rtol=1e-12, atol=1e-12)
    # the checked API is the same numbers
    m, s = sde.marginal(t)
    assert torch.equal(m, torch.exp(sde.log_mean_coef(t))) and torch.equal(s, sde.std(t))
    assert torch.equal(sde.diffusion(t), torch.sqrt(sde.g2(t)))
    # a Python number is a float64 time
    assert sde.std(0.5).item() == pytest.approx(std(torch.tensor(0.5, dtype=torch.float64)).item(), rel=1e-14)


def test_design_closed_forms():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    vp, sub, ve = VPSDE(), SubVPSDE(), VESDE()
    logm = -0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1
    assert torch.allclose(vp.marginal(t)[0], logm.exp())
    assert torch.allclose(vp.marginal(t)[1], torch.sqrt(1 - torch.exp(2 * logm)))
    assert torch.allclose(sub.marginal(t)[1], 1 - torch.exp(2 * logm))
    beta = 0.1 + t * 19.9
    assert torch.allclose(sub.diffusion(t) ** 2, beta * (1 - torch.exp(-2 * 0.1 * t - 19.9 * t ** 2)))
    assert torch.allclose(ve.marginal(t)[1], 0.01 * (50 / 0.01) ** t)
    assert torch.allclose(ve.diffusion(t), 0.01 * (50 / 0.01) ** t * math.sqrt(2 * math.log(5000)))
    assert ve.prior_std == 50.0


def test_cosine_schedule_closed_form():
    sde = VPSDE(schedule="cosine")
    t = torch.tensor([0.0, 0.25, 0.9], dtype=torch.float64)
    s = 0.008
    abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    m, std = sde.marginal(t)
    assert torch.allclose(m ** 2, abar) and torch.allclose(std ** 2, 1 - abar)
    assert sde.discrete_betas.max() <= 0.999


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "vp-cosine"])
def test_euler_maruyama_forward_simulation_matches_marginal(name):
    """Fine EM steps of dx = f dt + g dW from x_0 reproduce m(t)x_0 and σ(t)."""
    sde = SDE_FACTORIES[name]()
    n, steps, t_end = 40_000, 1000, 0.6
    g = gen(2)
    x0 = 1.3
    # VE's marginal convention includes σ(0) = σ_min: start from the t = 0 marginal.
    _, s0 = sde.marginal(torch.tensor([0.0], dtype=torch.float64))
    x = x0 + s0 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    dt = t_end / steps
    for i in range(steps):
        t = torch.full((n,), i * dt, dtype=torch.float64)
        x = x + sde.drift(x, t) * dt + sde.diffusion(t)[:, None] * math.sqrt(dt) * torch.randn(
            n, 1, generator=g, dtype=torch.float64)
    m, s = sde.marginal(torch.tensor([t_end], dtype=torch.float64))
    se = s.item() / math.sqrt(n)
    assert abs(x.mean().item() - m.item() * x0) < 5 * se + 1e-3 * s.item()
    assert abs(x.std().item() / s.item() - 1) < 0.02


def test_marginal_sample_and_prior(any_sde):
    g = gen(3)
    x0 = torch.zeros(20_000, 3, 4, 4)  # an image-shaped batch
    t = torch.full((20_000,), 0.5)
    xt, z = any_sde.marginal_sample(x0, t, generator=g)
    assert xt.shape == x0.shape and z.shape == x0.shape
    _, s = any_sde.marginal(torch.tensor([0.5]))
    assert abs(xt.std().item() / s.item() - 1) < 0.01
    p = any_sde.prior_sample((10_000, 2), generator=g)
    assert abs(p.std().item() / any_sde.prior_std - 1) < 0.03
    # prior_logp is the Gaussian log-density, summed over the event
    z = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, any_sde.prior_std).log_prob(z).sum((1, 2))
    assert torch.allclose(any_sde.prior_logp(z), ref)


def test_reverse_and_pf_drift(any_sde):
    x = torch.randn(5, 2, dtype=torch.float64, generator=gen(4))
    t = torch.full((5,), 0.4, dtype=torch.float64)
    s = -x
    f, g = any_sde.sde(x, t)
    assert torch.allclose(any_sde.reverse_drift(x, t, s), f - g[:, None] ** 2 * s)
    assert torch.allclose(any_sde.pf_drift(x, t, lambda x, t: -x), f - 0.5 * g[:, None] ** 2 * s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_are_kept(any_sde, dtype, device):
    t = (torch.rand(6, dtype=dtype, generator=gen(5)) * any_sde.T).to(device)
    m, s = any_sde.marginal(t)
    assert m.dtype == dtype and s.dtype == dtype and torch.isfinite(s).all() and s.device == t.device
    assert any_sde.drift(torch.ones(6, 2, dtype=dtype, device=device), t).dtype == dtype


def test_log_snr_inverse(any_sde):
    t = torch.tensor([1e-3, 0.1, 0.5, 0.9], dtype=torch.float64) * any_sde.T
    assert torch.allclose(any_sde.t_from_log_snr(any_sde.log_snr(t)), t, atol=1e-9)


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda: VPSDE(beta_min=-0.1), "beta_min must be a finite number > 0"),
    (lambda: VPSDE(beta_min=5.0, beta_max=1.0), "beta_min must be < beta_max"),
    (lambda: VPSDE(schedule="quadratic"), "schedule must be one of"),
    (lambda: VESDE(sigma_min=0.0), "sigma_min must be"),
    (lambda: VESDE(sigma_min=10, sigma_max=1), "sigma_min must be < sigma_max"),
    (lambda: VPSDE(N=0), "N must be an integer >= 1"),
    (lambda: VPSDE().marginal(torch.tensor([1.5])), r"t must lie in \[0, T\]"),
    (lambda: VPSDE().marginal(torch.tensor([-0.1])), r"t must lie in \[0, T\]"),
    (lambda: VPSDE().marginal(torch.tensor([float("nan")])), r"t must lie in \[0, T\]"),
    (lambda: VPSDE().drift(torch.ones(3, 2), torch.ones(4) * 0.5), "t has 4 entries but the batch has 3"),
    (lambda: VPSDE().reverse_drift(torch.ones(3, 2), 0.5, torch.ones(3, 3)), "score has shape"),
    (lambda: VPSDE().prior_sample((0, 2)), "shape must be"),
])
def test_bad_input_is_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- the VP SDE of a discrete β table (diffusers' schedules) -------------------------------------
@pytest.mark.parametrize("schedule, N", [("linear", 1000), ("scaled_linear", 500), ("squaredcos_cap_v2", 1000),
                                         ("squaredcos_cap_v2", 500)])
def test_discrete_table_sde_equals_its_chain_on_the_lattice(schedule, N):
    sde = DiscreteVPSDE(schedule, beta_start=1e-4, beta_end=0.02, N=N)
    betas = sde.discrete_betas
    abar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, N + 1, dtype=torch.float64) / N  # diffusers' index i = 0 … N−1 at t = (i + 1)/N
    torch.testing.assert_close(torch.exp(2 * sde.log_mean_coef(t)), abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.std(t) ** 2, 1 - abar, rtol=1e-12, atol=1e-15)
    assert sde.default_eps == sde.likelihood_eps == 1.0 / N  # index 0, the least noise it was trained at
    # β(t) integrates back to log ᾱ: Simpson's rule is exact for the cubic's quadratic derivative
    # (the ends of each segment taken from inside it, where the piece is that segment's)
    k = torch.arange(N, dtype=torch.float64)
    inner = 1e-13
    simpson = (sde.beta((k + inner) / N) + 4 * sde.beta((k + 0.5) / N) + sde.beta((k + 1 - inner) / N)) / (6 * N)
    torch.testing.assert_close(torch.cumsum(-simpson, 0), torch.log(abar), rtol=1e-9, atol=1e-10)
    # a continuous β ≥ 0: no jump at the lattice points, where the linear interpolant's jumped
    nodes = k[1:] / N
    torch.testing.assert_close(sde.beta(nodes - 1e-9), sde.beta(nodes + 1e-9), rtol=1e-5, atol=1e-8)
    assert (sde.beta(torch.linspace(0, 1, 10 * N + 1, dtype=torch.float64)) >= 0).all()
    assert sde_from_config(sde.config()).config() == sde.config()


def test_discrete_table_matches_the_named_schedules_formulas():
    N = 1000
    lin = DiscreteVPSDE("linear", 1e-4, 0.02, N).discrete_betas
    assert lin[0] == 1e-4 and abs(float(lin[-1]) - 0.02) < 1e-15 and abs(float(lin[1] - lin[0]) - 0.0199 / 999) < 1e-15
    sl = DiscreteVPSDE("scaled_linear", 0.00085, 0.012, N).discrete_betas
    assert abs(float(sl[0]) - 0.00085) < 1e-15 and abs(float(sl[-1]) - 0.012) < 1e-15
    cos = DiscreteVPSDE("squaredcos_cap_v2", N=N).discrete_betas
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abs(float(cos[9]) - (1 - f(10 / N) / f(9 / N))) < 1e-15 and float(cos[-1]) == 0.999  # the cap


def test_explicit_betas_and_bad_tables():
    sde = DiscreteVPSDE(betas=[0.1, 0.2, 0.3])
    assert sde.N == 3 and sde.config() == dict(name="vpdiscrete", N=3, betas=[0.1, 0.2, 0.3])
    assert float(sde.alphas_cumprod[-1]) == pytest.approx(0.9 * 0.8 * 0.7, rel=1e-15)
    assert "DiscreteVPSDE(N=3, betas=[0.1 ... 0.3])" == repr(sde)
    with pytest.raises(ValueError, match=r"every β must lie in \(0, 1\); β_2 = 1.0"):
        DiscreteVPSDE(betas=[0.1, 1.0])
    with pytest.raises(ValueError, match="beta_schedule must be one of 'linear', 'scaled_linear', "
                                         "'squaredcos_cap_v2', 'sigmoid' or explicit trained_betas, got 'cosine'"):
        DiscreteVPSDE("cosine")

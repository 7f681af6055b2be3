"""Weak convergence orders of the stochastic solvers, measured exactly (no Monte-Carlo noise).

On Gaussian data N(μ, diag(s²)) the score is affine in x, so every solver here maps the start
and its noise draws affinely, per coordinate: x_K = b + A·x_T + Σ_j C_j·z_j, an exact Gaussian.
An orthogonal design reads off its moments: the batch is the n = 256 rows of a Sylvester–Hadamard
matrix H (±1 entries, orthogonal columns, column 0 all ones); x_T = m_T·μ + √v_T·H[:, 1] and the
j-th call of `Problem.noise` returns H[:, j + 2].  The batch mean is then exactly b + A·m_T·μ and
the batch variance (÷ n) exactly A²v_T + Σ C_j², the mean and variance of the solver's output
law for x_T ~ p_T.  x_T follows the exact p_T = N(m_T·μ, v_T), not the prior N(0, σ_T²): a
convergent solver then lands on p_{t_K} = N(m·μ, m²s² + σ²), and the weak error
|Δmean| + |Δvar| has no floor from the prior's mismatch.
"""

import math

import pytest
import scipy.linalg
import torch

import solvers
from conftest import SDE_FACTORIES, gen, measured_order, solvers_without_a_case
from scoresde.oracle import GaussianMixture
from solvers._common import Problem

DATA = GaussianMixture.gaussian(4)  # stds 0.1 … 1.5
N_ROWS = 256  # ≥ 2 + the most noise draws of a solve (K − 1 ≤ 159)


class Design:
    """x_T and the noise draws as orthogonal ±1 columns of a Hadamard matrix (see the module doc)."""

    def __init__(self, n: int = N_ROWS):
        self.H = torch.from_numpy(scipy.linalg.hadamard(n)).to(torch.float64)
        self.calls = 0

    def noise(self, x):
        col = self.calls + 2
        if col >= self.H.shape[1]:
            raise AssertionError(f"the design has {self.H.shape[1] - 2} noise columns, call {self.calls + 1} wants more")
        self.calls += 1
        return self.H[:, col].reshape(-1, *[1] * (x.ndim - 1)).expand(x.shape).to(x.dtype)


def marginal(sde, t: float):
    """Mean m·μ and variance m²s² + σ² of p_t, per coordinate."""
    m, s = (float(v) for v in sde.marginal(torch.tensor([t], dtype=torch.float64)))
    return m * DATA.means[0], m * m * DATA.eigvals[0] + s * s


def exact_moments(monkeypatch, sde, solver, K, grid, opts, eps=None, seed=0):
    """(mean, variance, p_{t_K}'s mean and variance, noise calls) of the solver's output for x_T ~ p_T."""
    design = Design()
    mT, vT = marginal(sde, sde.T)
    with monkeypatch.context() as mp:
        mp.setattr(Problem, "noise", lambda prob, x: design.noise(x))
        res = solvers.sample(DATA.score_fn(sde), sde, x_T=mT + vT.sqrt() * design.H[:, 1:2], solver=solver,
                             steps=K, grid=grid, eps=eps, generator=gen(seed), **opts)
    return (res.x.mean(0), res.x.var(0, unbiased=False), *marginal(sde, float(res.t_grid[-1])), design.calls)


def weak_error(monkeypatch, sde, solver, grid, opts):
    def error(K):
        mean, var, m_true, v_true, _ = exact_moments(monkeypatch, sde, solver, K, grid, opts)
        return ((mean - m_true).abs() + (var - v_true).abs()).max().item()
    return error


CHURN = {"S_churn": 10.0}  # γ = 10/K: below EDM's cap √2 − 1 from K = 25 on
# (solver, grid, options); the declared weak order comes from solvers.traits.  Why each order: the
# README's solver section.
WEAK_CASES = [("euler_maruyama", "uniform", {}), ("ddpm", "uniform", {}), ("ddim", "uniform", {"eta": 0.5}),
              ("dpmpp_2m_sde", "logsnr", {}), ("dpmpp_2m_sde", "logsnr", {"solver_type": "heun"}),
              ("euler", "edm", CHURN), ("heun", "edm", CHURN)]
# Where K = 20…160 is not yet asymptotic, the slope measured instead.  EM on VE: its O(Δt)
# coefficient is −L(σ(eps)² + σ_max²v_eps²/v_T²)·(T − eps), L = ln(σ_max/σ_min), ≈ 1e-3 … 2e-2 at
# eps = 1e-5, so the O(Δt²) term dominates for these K (test_em_first_order_term_on_ve).
PREASYMPTOTIC = {("euler_maruyama", "ve"): 2}
BAND = 0.35  # under half the gap between orders: a solver that loses an order fails


def test_every_declared_weak_order_has_a_case():
    assert not solvers_without_a_case("weak_order", WEAK_CASES)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("solver, grid, opts", WEAK_CASES)
def test_weak_order(monkeypatch, one_thread, sde_name, solver, grid, opts):
    sde = SDE_FACTORIES[sde_name]()
    order = PREASYMPTOTIC.get((solver, sde_name), solvers.traits(solver, opts).weak_order)
    slope, errs = measured_order(sde, solver, grid, opts, error=weak_error(monkeypatch, sde, solver, grid, opts))
    assert abs(slope - order) < BAND, f"{solver}{opts}/{grid}: weak order {slope:.2f}, expected {order}, errors {errs}"


def test_em_first_order_term_on_ve(monkeypatch, one_thread):
    """EM's variance error on VE, to first order in Δt = (T − eps)/K, from the variance recursion
    V' = (1 − g²Δt/v)²V + g²Δt against v' = v − ∫g² (g² = 2Lσ², L = ln(σ_max/σ_min)), less the
    omitted last-step noise: −L(T − eps)(σ(eps)² + σ_max²·v(eps)²/v(T)²)/K.  Where σ(eps) is not
    tiny it dominates; Richardson 2·E(2K)·2K − E(K)·K removes the O(1/K²) term."""
    sde, eps = SDE_FACTORIES["ve"](), 0.5
    _, v_T = marginal(sde, sde.T)
    _, v_eps = marginal(sde, eps)
    s2 = float(sde.marginal(torch.tensor([eps], dtype=torch.float64))[1]) ** 2
    L = math.log(sde.sigma_max / sde.sigma_min)
    predicted = -L * (sde.T - eps) * (s2 + sde.sigma_max ** 2 * v_eps ** 2 / v_T ** 2)
    E = {K: exact_moments(monkeypatch, sde, "euler_maruyama", K, "uniform", {}, eps=eps)[1] - v_eps for K in (80, 160)}
    coef = 2 * 160 * E[160] - 80 * E[80]
    torch.testing.assert_close(coef, predicted, rtol=0.01, atol=0)


STOCHASTIC = WEAK_CASES + [("ddim", "uniform", {"eta": 1.0})]


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("solver, grid, opts", STOCHASTIC)
def test_design_gives_the_exact_law(monkeypatch, one_thread, sde_name, solver, grid, opts):
    """The design's moments are those of the real sampler: against 2^16 Monte-Carlo samples (5
    standard errors), with every noise draw through prob.noise (K − 1 of them, none on the last
    step; the generator's seed changes nothing)."""
    sde, K = SDE_FACTORIES[sde_name](), 6
    mean, var, _, _, calls = exact_moments(monkeypatch, sde, solver, K, grid, opts, seed=0)
    assert calls == K - 1
    again = exact_moments(monkeypatch, sde, solver, K, grid, opts, seed=1)
    assert torch.equal(again[0], mean) and torch.equal(again[1], var)

    n = 2 ** 16
    mT, vT = marginal(sde, sde.T)
    g = gen(1)
    x_T = mT + vT.sqrt() * torch.randn((n, DATA.D), generator=g, dtype=torch.float64)
    x = solvers.sample(DATA.score_fn(sde), sde, x_T=x_T, solver=solver, steps=K, grid=grid, generator=g, **opts).x
    assert ((x.mean(0) - mean).abs() <= 5 * (var / n).sqrt()).all(), (x.mean(0), mean)
    assert ((x.var(0) - var).abs() <= 5 * var * math.sqrt(2 / n)).all(), (x.var(0), var)


def test_ddim_eta_1_is_ddpm_in_law(monkeypatch, one_thread):
    sde = SDE_FACTORIES["vp"]()
    a = exact_moments(monkeypatch, sde, "ddim", 20, "uniform", {"eta": 1.0})
    b = exact_moments(monkeypatch, sde, "ddpm", 20, "uniform", {})
    torch.testing.assert_close(a[:2], b[:2], rtol=1e-12, atol=1e-14)


def test_design_variance_of_a_deterministic_solver(monkeypatch, one_thread):
    """ddim (η = 0) draws nothing: its output is b + A·x_T, so the design's variance is A²v_T with A
    found independently by a finite difference of two solves."""
    sde = SDE_FACTORIES["ve"]()
    _, var, _, _, calls = exact_moments(monkeypatch, sde, "ddim", 12, "uniform", {})
    mT, vT = marginal(sde, sde.T)
    x = solvers.sample(DATA.score_fn(sde), sde, x_T=torch.stack([mT, mT + 1]), solver="ddim", steps=12,
                       grid="uniform").x
    assert calls == 0
    torch.testing.assert_close(var, (x[1] - x[0]) ** 2 * vT, rtol=1e-10, atol=0)

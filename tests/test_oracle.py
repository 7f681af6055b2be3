"""Exact-score oracles against autograd, quadrature, moments and the probability-flow ODE."""
import math

import pytest
import torch

from conftest import SDE_FACTORIES, gen
from scoresde import VPSDE
from scoresde.oracle import GaussianMixture, make_oracle


def full_cov_mixture():
    A = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    B = torch.tensor([[0.2, -0.1], [-0.1, 0.3]], dtype=torch.float64)
    return GaussianMixture([[1.0, -1.0], [-2.0, 0.5]], torch.stack([A, B]), [0.3, 0.7])


ORACLES = {"ring": lambda: GaussianMixture.ring(), "full": full_cov_mixture,
           "gauss8": lambda: GaussianMixture.gaussian(8)}


@pytest.mark.parametrize("oracle", list(ORACLES))
@pytest.mark.parametrize("t", [1e-4, 0.05, 0.5, 1.0])
def test_score_is_gradient_of_log_pt(any_sde, oracle, t):
    data = ORACLES[oracle]()
    x = (3 * torch.randn(16, data.D, dtype=torch.float64, generator=gen(0))).requires_grad_(True)
    t = min(t, any_sde.T)
    lp = data.log_prob_t(x, t, any_sde)
    grad = torch.autograd.grad(lp.sum(), x)[0]
    assert torch.allclose(data.score(x.detach(), t, any_sde), grad, rtol=1e-8, atol=1e-8)


def test_log_pt_matches_independent_mixture(device):
    data, sde = full_cov_mixture(), VPSDE()
    t = 0.3
    m, s = (v.item() for v in sde.marginal(torch.tensor([t], dtype=torch.float64)))
    x = torch.randn(10, 2, dtype=torch.float64, generator=gen(1))
    comps = [torch.distributions.MultivariateNormal(m * mu, m ** 2 * C + s ** 2 * torch.eye(2))
             for mu, C in zip(data.means, torch.einsum("kde,ke,kfe->kdf", data.U, data.eigvals, data.U))]
    ref = torch.logsumexp(torch.stack([math.log(w) + c.log_prob(x) for w, c in zip(data.weights.tolist(), comps)]), 0)
    assert torch.allclose(data.log_prob_t(x.to(device), t, sde).cpu(), ref, atol=1e-10)


@pytest.mark.parametrize("oracle", ["ring", "full"])
def test_log_p0_integrates_to_one(oracle):
    data = ORACLES[oracle]()
    h = 0.02
    g = torch.arange(-7, 7 + h / 2, h, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="ij")
    p = data.log_prob(torch.stack([X.ravel(), Y.ravel()], 1)).exp()
    assert p.sum().item() * h * h == pytest.approx(1.0, abs=1e-4)


def test_stable_far_away_and_tiny_t():
    data, sde = GaussianMixture.ring(), VPSDE()
    x = torch.tensor([[1e3, -1e3], [0.0, 0.0]], dtype=torch.float64)
    for t in (0.0, 1e-7):
        assert torch.isfinite(data.log_prob_t(x, t, sde)).all()
        assert torch.isfinite(data.score(x, t, sde)).all()
    assert torch.isfinite(data.score(x.float(), 1e-7, sde)).all()


@pytest.mark.parametrize("oracle", list(ORACLES))
def test_sampler_moments(oracle):
    data = ORACLES[oracle]()
    n = 200_000
    x = data.sample(n, generator=gen(2), dtype=torch.float64)
    cov = data.covariance()
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - data.mean()).abs() < 5 * se).all()
    assert torch.allclose(torch.cov(x.T), cov, rtol=0.02, atol=0.02 * cov.abs().max().item())


def test_ring_geometry():
    data = GaussianMixture.ring(k=8, radius=4.0, std=0.2)
    assert torch.allclose(data.means.norm(dim=1), torch.full((8,), 4.0, dtype=torch.float64))
    assert torch.allclose(data.eigvals, torch.full((8, 2), 0.04, dtype=torch.float64))
    assert make_oracle("gmm8").K == 8 and make_oracle("gaussian16").D == 16


@pytest.mark.parametrize("name", list(SDE_FACTORIES))
def test_closed_form_flow_solves_pf_ode(name):
    """d/dt flow(x_s, s, t) = f − ½g²·score at t, by central finite differences."""
    sde = SDE_FACTORIES[name]()
    data = GaussianMixture.gaussian(5)
    xs = data.sample(8, generator=gen(3), dtype=torch.float64)
    s0 = 1e-3
    for t in (0.0503, 0.3007, 0.7011):  # off the 1/500 lattice, where the discrete β(t) jumps
        h = 1e-5
        xt = data.flow(xs, s0, t, sde)
        dx = (data.flow(xs, s0, t + h, sde) - data.flow(xs, s0, t - h, sde)) / (2 * h)
        rhs = sde.pf_drift(xt, t, data.score_fn(sde))
        assert torch.allclose(dx, rhs, rtol=1e-6, atol=1e-6 * rhs.abs().max().item())


def test_flow_is_measure_preserving():
    """Pushing exact p_s samples through the flow gives p_t's moments."""
    sde, data = VPSDE(), GaussianMixture.gaussian(3)
    xs, _ = sde.marginal_sample(data.sample(100_000, generator=gen(4), dtype=torch.float64), 0.2, generator=gen(5))
    xt = data.flow(xs, 0.2, 0.8, sde)
    m, s = (v.item() for v in sde.marginal(torch.tensor([0.8], dtype=torch.float64)))
    assert torch.allclose(xt.std(0), torch.sqrt(m ** 2 * data.eigvals[0] + s ** 2), rtol=0.01)


@pytest.mark.parametrize("bad, match", [
    (lambda: GaussianMixture([1.0, 2.0], 1.0), r"means must have shape \(K, D\)"),
    (lambda: GaussianMixture([[0.0, 0.0]], [[-1.0, 1.0]]), "variances must be > 0"),
    (lambda: GaussianMixture([[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
    (lambda: GaussianMixture([[0.0], [1.0]], 1.0, [1.0, -1.0]), "weights must be"),
    (lambda: GaussianMixture.ring().log_prob(torch.zeros(3, 3)), r"x must have shape \(B, 2\)"),
    (lambda: GaussianMixture.ring().flow(torch.zeros(3, 2), 0.1, 0.2, VPSDE()), "single Gaussian"),
    (lambda: make_oracle("moons"), "unknown oracle 'moons'"),
])
def test_oracle_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()

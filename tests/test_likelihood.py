"""Probability-flow likelihoods against closed-form Gaussian and mixture densities."""
import math

import pytest
import torch

from conftest import SDE_FACTORIES, gen
from scoresde import VPSDE
from scoresde.likelihood import bits_per_dim, dequantize, log_likelihood
from scoresde.oracle import GaussianMixture


def prior_mismatch(data, sde, x, eps):
    """|log prior(x_T) − log p_T(x_T)| along the exact flow: the part of the error that is the
    model's (p_T is not exactly the prior), not the solver's."""
    xT = data.flow(x, eps, sde.T, sde)
    return (sde.prior_logp(xT) - data.log_prob_t(xT, sde.T, sde)).abs()


@pytest.mark.parametrize("D", [2, 64])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_gaussian_likelihood_matches_closed_form(D, sde_name):
    sde, data = SDE_FACTORIES[sde_name](), GaussianMixture.gaussian(D)
    x = data.sample(16, generator=gen(0), dtype=torch.float64)
    out = log_likelihood(data.score_fn(sde), sde, x, method="exact", rtol=1e-5, atol=1e-5)
    err = (out.logp - data.log_prob(x)).abs() / D
    # modelling terms, computed exactly: p_T is not quite the prior, and p_eps is not quite p_0
    # (for VE, σ(0) = σ_min blurs the data)
    blur = (data.log_prob_t(x, 1e-5, sde) - data.log_prob(x)).abs()
    assert (err <= 1e-3 + (prior_mismatch(data, sde, x, 1e-5) + blur) / D).all(), err
    # the solver's own error, with the mismatch removed exactly
    xT = data.flow(x, 1e-5, sde.T, sde)
    target = data.log_prob_t(x, 1e-5, sde) - data.log_prob_t(xT, sde.T, sde) + sde.prior_logp(xT)
    assert ((out.logp - target).abs() / D).max() < 1e-3
    assert out.nfe > 10 and out.stderr is None


def test_ring_likelihood_matches_mixture():
    sde, data = VPSDE(), GaussianMixture.ring()
    x = data.sample(32, generator=gen(1), dtype=torch.float64)
    out = log_likelihood(data.score_fn(sde), sde, x, rtol=1e-5, atol=1e-5)
    assert (out.logp - data.log_prob(x)).abs().max() < 0.01  # nats per sample (D = 2)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_exact_within_standard_errors(probe):
    sde = VPSDE()
    A = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=torch.float64)
    data = GaussianMixture([[1.0, 0.0, -1.0], [-1.0, 1.0, 0.5]], torch.stack([A, 0.3 * A + 0.1 * torch.eye(3)]))
    x = data.sample(12, generator=gen(2), dtype=torch.float64)
    exact = log_likelihood(data.score_fn(sde), sde, x, rtol=1e-6, atol=1e-6).logp
    h = log_likelihood(data.score_fn(sde), sde, x, method="hutchinson", probes=48, probe=probe, generator=gen(3),
                       rtol=1e-6, atol=1e-6)
    assert (h.stderr > 0).all()
    z = (h.logp - exact) / h.stderr
    assert z.abs().max() < 4, z
    assert abs(z.mean().item()) * math.sqrt(len(z)) < 3, z


def test_rademacher_is_exact_for_diagonal_jacobian():
    sde, data = VPSDE(), GaussianMixture.gaussian(4)
    x = data.sample(4, generator=gen(4), dtype=torch.float64)
    e = log_likelihood(data.score_fn(sde), sde, x).logp
    h = log_likelihood(data.score_fn(sde), sde, x, method="hutchinson", probes=3, generator=gen(5))
    assert torch.allclose(h.logp, e, atol=1e-6) and torch.allclose(h.stderr, torch.zeros(4, dtype=torch.float64))


def test_batching_gives_the_same_answer():
    sde, data = VPSDE(), GaussianMixture.ring()
    x = data.sample(10, generator=gen(6), dtype=torch.float64)
    a = log_likelihood(data.score_fn(sde), sde, x, rtol=1e-7, atol=1e-7).logp
    b = log_likelihood(data.score_fn(sde), sde, x, rtol=1e-7, atol=1e-7, batch_size=3).logp
    assert torch.allclose(a, b, atol=1e-4)


def test_float32_works(device):
    sde, data = VPSDE(), GaussianMixture.ring()
    x = data.sample(8, generator=gen(7))
    out = log_likelihood(data.score_fn(sde), sde, x.to(device), rtol=1e-4, atol=1e-4)
    assert out.logp.dtype == torch.float32 and out.logp.device == x.to(device).device
    assert (out.logp.double().cpu() - data.log_prob(x.double())).abs().max() < 0.05


def test_bits_per_dim_hand_computed():
    # The uniform density on [−1, 1]^D (p = 2^−D) is worth exactly b bits per dimension.
    D = 5
    assert bits_per_dim(torch.tensor([-D * math.log(2)]), D, bits=8).item() == pytest.approx(8.0)
    # log p = −5 nats over D = 3 dims of 8-bit data: 5/(3 ln 2) + 7
    assert bits_per_dim(torch.tensor([-5.0]), 3, bits=8).item() == pytest.approx(5 / (3 * math.log(2)) + 7)
    assert bits_per_dim(torch.tensor([0.0]), 10, bits=1).item() == pytest.approx(0.0)


def test_dequantize_keeps_each_value_in_its_cell():
    k = torch.randint(0, 256, (1000, 3), generator=gen(8)).double()
    x = 2 * k / 255 - 1
    y = dequantize(x, 8, generator=gen(9))
    cell = torch.floor((y + 1) / 2 * 256)
    assert torch.equal(cell, k) and (y >= -1).all() and (y < 1).all()


@pytest.mark.parametrize("kw, match", [
    (dict(method="trace"), "method must be 'exact' or 'hutchinson'"),
    (dict(probe="sphere", method="hutchinson"), "probe must be 'rademacher' or 'gaussian'"),
    (dict(eps=0.0), r"eps must lie in \(0, T\)"),
    (dict(eps=1.0), r"eps must lie in \(0, T\)"),
    (dict(probes=0, method="hutchinson"), "probes must be an integer >= 1"),
    (dict(x=torch.zeros(4, 3)), r"x must have shape \(B, 2\)"),
    (dict(x=torch.tensor([[0.0, float("nan")]])), "x contains NaN or inf \\(first at sample 0\\)"),
    (dict(score_fn=lambda x, t: x * float("nan")), "drift is NaN/inf at t="),
])
def test_validation(kw, match):
    sde, data = VPSDE(), GaussianMixture.ring()
    args = dict(x=torch.zeros(4, 2), score_fn=data.score_fn(sde), shape=(2,))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        log_likelihood(args.pop("score_fn"), sde, args.pop("x"), **args)


def test_step_underflow_is_reported_with_t_and_a_hint(monkeypatch):
    """torchdiffeq signals a collapsing step with `assert t0 + dt > t0, 'underflow in dt …'`."""
    import scoresde.likelihood as lik

    def failing_odeint(func, y0, t, **kw):
        func(t[0] + 0.25, y0)  # one evaluation, so the last t seen is known
        raise AssertionError("underflow in dt 0.0")

    monkeypatch.setattr(lik, "odeint", failing_odeint)
    sde, data = VPSDE(), GaussianMixture.ring()
    with pytest.raises(ValueError, match=r"failed at t=0\.25.*underflow in dt.*raise rtol/atol \(now 1e-05/1e-05\) or eps"):
        log_likelihood(data.score_fn(sde), sde, data.sample(4, generator=gen(0), dtype=torch.float64))


# -- bits/dim with dequantization repeats ----------------------------------------------------------

def test_bits_per_dim_estimate_matches_the_closed_form_density_of_dequantized_points():
    """A zero-mean Gaussian N(0, diag(0.25, 2)) under VP keeps p_T = N(0, I) to ~1e-5 nats, so the
    ODE's log p is the closed-form density.  The same dequantization is written out here:
    k = integer level, x̃ = 2(k + u)/L − 1 with u from the same seeded generator, then
    bpd = −mean_r log p(x̃)/(D ln 2) + (b − 1)."""
    from scoresde.likelihood import bits_per_dim_estimate

    b, L, n, R, var = 4, 16, 24, 3, torch.tensor([0.25, 2.0], dtype=torch.float64)
    data = GaussianMixture([[0.0, 0.0]], torch.diag(var).unsqueeze(0))
    k = torch.randint(0, L, (n, 2), generator=gen(5)).double()
    x = 2 * k / (L - 1) - 1
    est = bits_per_dim_estimate(data.score_fn(VPSDE()), VPSDE(), x, bits=b, repeats=R, generator=gen(6),
                                rtol=1e-6, atol=1e-6)
    g = gen(6)
    logps = []
    for _ in range(R):
        xt = 2 * (k + torch.rand((n, 2), generator=g, dtype=torch.float64)) / L - 1
        logps.append(-0.5 * (xt ** 2 / var).sum(1) - 0.5 * torch.log(2 * math.pi * var).sum())
    bpd = -torch.stack(logps).mean(0) / (2 * math.log(2)) + (b - 1)
    assert est.bpd == pytest.approx(bpd.mean().item(), abs=1e-4)
    assert est.stderr == pytest.approx(bpd.std().item() / math.sqrt(n), rel=1e-3)
    assert est.n == n and est.D == 2 and est.levels == L and est.method == "exact" and est.nfe > 3 * 10


def test_bits_per_dim_estimate_is_what_the_cli_prints(tmp_path):
    """`scoresde likelihood --bits B --dequant-repeats R` and the library call give one number."""
    import json

    from click.testing import CliRunner

    from scoresde.cli import cli
    from scoresde.evaluation.resolve import resolve_model
    from scoresde.likelihood import bits_per_dim_estimate

    r = CliRunner().invoke(cli, ["likelihood", "--model", "oracle:gmm8", "--n", "6", "--bits", "5",
                                 "--dequant-repeats", "2", "--rtol", "1e-3", "--atol", "1e-3", "--seed", "3",
                                 "--quiet", "--out", str(tmp_path / "l.json")])
    assert r.exit_code == 0, r.output
    printed = json.load(open(tmp_path / "l.json"))
    model = resolve_model("oracle:gmm8")
    g = torch.Generator().manual_seed(3)
    x = model.oracle.sample(6, generator=g, dtype=torch.float64)
    est = bits_per_dim_estimate(model.score_fn, model.sde, x, bits=5, repeats=2, generator=g, rtol=1e-3, atol=1e-3)
    assert est.bpd_per_sample.tolist() == pytest.approx(printed["bpd"], rel=1e-12)
    assert f"bits/dim  {est.bpd:.4f} ± {est.stderr:.4f}" in r.output and printed["nfe"] == est.nfe


@pytest.mark.parametrize("kw, message", [({"bits": None, "repeats": 2}, "continuous data (bits=None) has none"),
                                         ({"repeats": 0}, "repeats must be an integer >= 1, got 0"),
                                         ({"bits": 40}, "bits must be a number in [1, 16]"),
                                         ({"levels": 1}, "levels must be an integer >= 2, got 1")])
def test_bits_per_dim_estimate_names_a_bad_argument(kw, message):
    from scoresde.likelihood import bits_per_dim_estimate

    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        bits_per_dim_estimate(lambda x, t: -x, VPSDE(), torch.zeros(2, 2), **kw)

"""The DDPM variational bound and the continuous-time ELBO against exact answers on the oracles."""
import math

import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from conftest import gen
from scoresde import VESDE, SubVPSDE, VPSDE
from scoresde.bounds import (continuous_elbo, ddpm_vlb, decoder_nll, elbo_terms, likelihood_report, vlb_term,
                             vlb_terms)
from scoresde.likelihood import bits_per_dim, log_likelihood
from scoresde.oracle import GaussianMixture
from scoresde.sde import SDE

EPS = 1e-5


def gaussian_prior_kl(data, sde) -> float:
    """KL(p_T ‖ prior) for a single diagonal Gaussian: p_T = N(m μ, m²λ + σ²), closed form."""
    t = torch.tensor(sde.T, dtype=torch.float64)
    m, s = torch.exp(sde.log_mean_coef(t)), sde.std(t)
    v, mu, p2 = m ** 2 * data.eigvals[0] + s ** 2, m * data.means[0], sde.prior_std ** 2
    return 0.5 * (torch.log(p2 / v) + (v + mu ** 2) / p2 - 1).sum().item()


def gaussian_neg_entropy(data, sde, t) -> float:
    """E_{p_t} log p_t for a single diagonal Gaussian: −½Σ log(2πe v)."""
    t = torch.tensor(t, dtype=torch.float64)
    v = torch.exp(2 * sde.log_mean_coef(t)) * data.eigvals[0] + sde.std(t) ** 2
    return -0.5 * torch.log(2 * math.pi * math.e * v).sum().item()


def draws_at_eps(data, sde, n, g):
    """x ~ p_eps exactly: the data pushed to t = eps by the forward kernel."""
    x0 = data.sample(n, generator=g, dtype=torch.float64)
    return sde.marginal_sample(x0, torch.tensor(EPS, dtype=torch.float64), generator=g)[0]


def mean_se(v):
    return v.mean().item(), v.std().item() / math.sqrt(len(v))


SHORT = {  # SDEs whose terminal marginal is visibly not the prior, so KL(p_T ‖ π) is tested, not ~0
    "vp": lambda: VPSDE(beta_max=3.0),
    "vp-default": lambda: VPSDE(),
    "subvp": lambda: SubVPSDE(beta_max=3.0),
    "ve": lambda: VESDE(sigma_max=3.0),
}


@pytest.mark.parametrize("name", list(SHORT))
def test_elbo_with_exact_score_is_logp_minus_prior_kl(name):
    # With the exact score the reverse SDE is the exact time reversal, so only the prior differs:
    # E_{x~p_eps} ELBO(x) = E log p_eps − KL(p_T ‖ π).  Paired with log p_eps(x) per point, the
    # difference has the Monte Carlo noise only.
    sde, data = SHORT[name](), GaussianMixture.gaussian(2)
    g = gen(0)
    x = draws_at_eps(data, sde, 2000, g)
    out = elbo_terms(data.score_fn(sde), sde, x, eps=EPS, samples=16, generator=g)
    d, se = mean_se(out["elbo"] - data.log_prob_t(x, EPS, sde))
    kl = gaussian_prior_kl(data, sde)
    assert abs(d + kl) < 4 * se + 1e-3, (d, se, -kl)
    assert se < 0.05
    # the Estimate's mean against the closed form, within its own standard error
    est = continuous_elbo(data.score_fn(sde), sde, x, eps=EPS, samples=16, generator=gen(1))
    target = gaussian_neg_entropy(data, sde, EPS) - kl
    assert abs(est.logp_mean - target) < 4 * est.logp_stderr, (est.logp_mean, est.logp_stderr, target)
    assert est.nfe >= 1 and est.evals == 2 * 16 * 2000


def test_elbo_with_exact_score_on_a_mixture():
    # The ring under a short VP SDE: p_T is a mixture, so KL(p_T ‖ π) comes from exact draws of p_T
    # and its exact density, independently of the bound.
    sde, data = VPSDE(beta_max=3.0), GaussianMixture.ring()
    g = gen(2)
    x = draws_at_eps(data, sde, 2000, g)
    out = elbo_terms(data.score_fn(sde), sde, x, eps=EPS, samples=16, generator=g)
    d, se = mean_se(out["elbo"] - data.log_prob_t(x, EPS, sde))
    xT = sde.marginal_sample(data.sample(200000, generator=g, dtype=torch.float64), 1.0, generator=g)[0]
    kl, kl_se = mean_se(data.log_prob_t(xT, 1.0, sde) - sde.prior_logp(xT))
    assert kl > 0.5
    assert abs(d + kl) < 4 * math.hypot(se, kl_se), (d, se, -kl)


@pytest.mark.parametrize("name", ["vp-default", "ve"])
def test_perturbed_score_lowers_the_elbo_by_the_score_matching_error(name):
    # s_θ = s* + Δs with Δs(x, t) = c·(1 + t)·x: averaged over x ~ p_eps the cross term vanishes
    # (tower property), and the mean ELBO drops by ½∫ g²·E_{p_t}‖Δs‖² dt, here by quadrature of the
    # closed-form E‖x_t‖² = Σ m²(λ + μ²) + σ².  The same seed gives both runs the same t and ε.
    sde, data = SHORT[name](), GaussianMixture.gaussian(2)
    c = 0.3 if name == "vp-default" else 0.04
    exact = data.score_fn(sde)

    def perturbed(x, t):
        return exact(x, t) + c * (1 + t)[:, None] * x

    x = draws_at_eps(data, sde, 2000, gen(3))
    a = elbo_terms(exact, sde, x, eps=EPS, samples=16, generator=gen(4))["elbo"]
    b = elbo_terms(perturbed, sde, x, eps=EPS, samples=16, generator=gen(4))["elbo"]
    drop, se = mean_se(a - b)

    def integrand(t):
        tt = torch.tensor(t, dtype=torch.float64)
        m2, s2 = torch.exp(2 * sde.log_mean_coef(tt)), sde.std(tt) ** 2
        ex2 = (m2 * (data.eigvals[0] + data.means[0] ** 2) + s2).sum()
        return float(0.5 * sde.g2(tt) * c ** 2 * (1 + t) ** 2 * ex2)

    expected = integrate.quad(integrand, EPS, sde.T, limit=200)[0]
    assert expected > 0.2
    assert abs(drop - expected) < 4 * se + 0.01 * expected, (drop, se, expected)


class ChainSDE(SDE):
    """m and σ of the discrete DDPM chain (m = √ᾱ_i, σ = √(1 − ᾱ_i) at t = i/N), so that the
    oracle's score under it is the exact score of the chain's marginals."""

    prior_std = 1.0

    def __init__(self, sde):
        super().__init__(sde.N, 1.0)
        self.abar = sde.alphas_cumprod

    def _i(self, t):
        return (t.double() * self.N).round().long().clamp(1, self.N) - 1

    def _log_mean_coef(self, t):
        return (0.5 * torch.log(self.abar[self._i(t)])).to(t.dtype)

    def _std(self, t):
        return torch.sqrt(1 - self.abar[self._i(t)]).to(t.dtype)

    def _f_coef(self, t):
        raise NotImplementedError

    def _g2(self, t):
        raise NotImplementedError

    def config(self):
        return {}


def chain_score_fn(data, sde):
    """The score whose ε̂ = −σ(t_i)·s is the exact ε-prediction of the discrete chain."""
    chain = ChainSDE(sde)

    def score_fn(x, t):
        return data.score(x, t, chain) * (chain.std(t) / sde.std(t)).to(x.dtype)[:, None]
    return score_fn


def test_vlb_of_the_exact_eps_tends_to_the_continuous_elbo():
    # A narrow 1-D Gaussian (std 0.03) makes the discretization gap large at N = 100.  With σ² = β
    # (right for data wider than the first steps' noise) the gap closes as N grows.
    data = GaussianMixture.gaussian(1, mean=[0.3], stds=[0.03])
    x0 = data.sample(1500, generator=gen(5), dtype=torch.float64)
    ref = elbo_terms(data.score_fn(VPSDE()), VPSDE(), x0, eps=EPS, samples=16, generator=gen(6))["elbo"]
    gaps = {}
    for N in (100, 1000, 4000):
        sde = VPSDE(N=N)
        out = vlb_terms(chain_score_fn(data, sde), sde, x0, variance="beta", generator=gen(7), batch_size=100000)
        gaps[N] = mean_se(-out["nll"] - ref)
    (g1, s1), (g2, s2), (g3, s3) = gaps[100], gaps[1000], gaps[4000]
    assert g1 < -0.4, gaps
    assert abs(g2) < abs(g1) / 3 and abs(g2) < 0.15, gaps
    assert abs(g3) < 0.08 + 3 * s3 and abs(g3) < abs(g1) / 6, gaps


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
@pytest.mark.parametrize("i", [2, 7, 30, 50])
def test_vlb_term_matches_a_numerical_kl(i, variance):
    # On a single 2-D Gaussian: q(x_{i−1} | x_i, x_0) ∝ N(x_i; √α_i x_{i−1}, β_i)·N(x_{i−1}; √ᾱ_{i−1}x_0,
    # 1 − ᾱ_{i−1}) by Bayes on a grid, per coordinate; p_θ = the same posterior at x̂_0 (its mean
    # from the grid) with variance σ_i²; the KL by quadrature on the grid.
    sde, data = VPSDE(N=50), GaussianMixture.gaussian(2)
    x0 = torch.tensor([[0.2, -0.7]], dtype=torch.float64)
    noise = torch.tensor([[0.9, -1.3]], dtype=torch.float64)
    closed = vlb_term(data.score_fn(sde), sde, x0, i, noise, variance=variance).item()
    betas, abar = sde.discrete_betas.numpy(), sde.alphas_cumprod.numpy()
    b, a, ap = betas[i - 1], abar[i - 1], abar[i - 2]
    xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
    t = torch.full((1,), i / 50, dtype=torch.float64)
    eps_hat = -sde.std(t) * data.score(xt, t, sde)
    x0_hat = (xt - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)
    total = 0.0
    for d in range(2):
        c = math.sqrt(ap) * x0[0, d].item()
        grid = torch.linspace(c - 10, c + 10, 400001, dtype=torch.float64)  # ±10 prior stds: no tail lost
        dx = (grid[1] - grid[0]).item()

        def log_post(x0d):
            lp = (norm.logpdf(xt[0, d].item(), math.sqrt(1 - b) * grid.numpy(), math.sqrt(b))
                  + norm.logpdf(grid.numpy(), math.sqrt(ap) * x0d, math.sqrt(1 - ap)))
            lp = torch.as_tensor(lp)
            return lp - torch.logsumexp(lp, 0) - math.log(dx)

        lq = log_post(x0[0, d].item())
        lq_hat = log_post(x0_hat[0, d].item())
        mean_hat = (torch.exp(lq_hat) * grid).sum().item() * dx
        if variance == "beta_tilde":
            lp = lq_hat
        else:
            lp = torch.as_tensor(norm.logpdf(grid.numpy(), mean_hat, math.sqrt(b)))
        total += (torch.exp(lq) * (lq - lp)).sum().item() * dx
    assert closed == pytest.approx(total, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("levels", [None, 256, 17])
def test_decoder_matches_quadrature(levels):
    # L_0 per coordinate: the Gaussian's mass over the data point's bin (outer bins open), by quad.
    g = gen(8)
    if levels is None:
        x0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    else:
        k = torch.randint(0, levels, (3, 4), generator=g).double()
        k[0, 0], k[0, 1] = 0, levels - 1  # both edge bins
        x0 = 2 * k / (levels - 1) - 1
    mean = x0 + 0.01 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    var = 2e-4
    got = decoder_nll(x0, mean, var, levels)
    want = torch.zeros(3, dtype=torch.float64)
    for r in range(3):
        for d in range(4):
            x, mu, sd = x0[r, d].item(), mean[r, d].item(), math.sqrt(var)
            if levels is None:
                want[r] -= norm.logpdf(x, mu, sd)
                continue
            h = 1 / (levels - 1)
            lo = -math.inf if x < -1 + h / 2 else x - h
            hi = math.inf if x > 1 - h / 2 else x + h
            want[r] -= math.log(integrate.quad(lambda y: norm.pdf(y, mu, sd), lo, hi, points=[mu])[0]
                                if math.isfinite(lo) and math.isfinite(hi) else norm.cdf(hi, mu, sd) - norm.cdf(lo, mu, sd))
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-8)
    # far into a tail the log-mass stays finite and accurate (no 1e-12 floor)
    far = decoder_nll(torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1), 0.5, dtype=torch.float64), 1e-4, 256)
    assert far.item() == pytest.approx(-norm.logsf((0.5 - 1 / 255) / 1e-2), rel=1e-6)


def test_sampled_vlb_agrees_with_the_full_sum():
    # importance-sampled steps are unbiased: the same data, uniform and log-SNR sampling
    sde, data = VPSDE(N=100), GaussianMixture.gaussian(2)
    x0 = data.sample(1000, generator=gen(9), dtype=torch.float64)
    full = vlb_terms(data.score_fn(sde), sde, x0, generator=gen(10))["nll"]
    for how in ("uniform", "logsnr"):
        part = vlb_terms(data.score_fn(sde), sde, x0, terms=8, t_sampling=how, generator=gen(11))["nll"]
        d, se = mean_se(part - full)
        assert abs(d) < 4 * se, (how, d, se)


def test_ode_is_at_least_both_bounds_with_exact_scores():
    # With the exact score the ODE and the SDE model share E log p_eps − KL(p_T ‖ π) (a tie up to
    # the Monte Carlo noise); the DDPM chain's Gaussian steps cost a real gap below both.
    sde, data = VPSDE(), GaussianMixture.gaussian(2)
    x = data.sample(256, generator=gen(12), dtype=torch.float64)
    ode = log_likelihood(data.score_fn(sde), sde, x, method="exact", rtol=1e-6, atol=1e-6).logp
    elbo = elbo_terms(data.score_fn(sde), sde, x, eps=EPS, samples=64, generator=gen(13))["elbo"]
    vlb = -vlb_terms(data.score_fn(sde), sde, x, generator=gen(14))["nll"]
    d, se = mean_se(ode - elbo)
    assert -3 * se < d < 3 * se and se < 0.05, (d, se)
    d, se = mean_se(ode - vlb)
    assert d > 3 * se, (d, se)


def test_report_bits_per_dim_share_one_scale():
    # 8-bit data: the ODE and the ELBO on dequantized points with the + (b − 1) offset, the VLB with
    # the discretized decoder on the integers; the oracle's exact density makes all three close
    sde, data = VPSDE(N=200), GaussianMixture.gaussian(2, mean=[0.1, -0.2], stds=[0.3, 0.5])
    x = data.sample(64, generator=gen(15), dtype=torch.float64).clamp(-1, 1)
    x = 2 * torch.round((x + 1) / 2 * 255) / 255 - 1
    rep = likelihood_report(data.score_fn(sde), sde, x, bits=8, generator=gen(16),
                            ode=dict(method="exact", rtol=1e-4, atol=1e-4), elbo=dict(samples=4))
    assert list(rep) == ["ode", "elbo", "vlb"]
    for e in rep.values():
        assert e.levels == 256 and e.n == 64 and e.D == 2 and math.isfinite(e.stderr) and e.seconds > 0
        assert e.bpd == pytest.approx(bits_per_dim(e.logp, 2, levels=256).mean().item(), rel=1e-9)
    assert abs(rep["elbo"].bpd - rep["ode"].bpd) < 0.2
    assert rep["vlb"].bpd > rep["ode"].bpd - 0.05
    assert "lower bound" in rep["vlb"].what and "not a bound" in rep["ode"].what
    # the VLB on dequantized points (Gaussian decoder, + (b − 1)) bounds the same quantity as the
    # other two; with repeats it averages over dequantization draws like them
    deq = ddpm_vlb(data.score_fn(sde), sde, x, bits=8, decoder="dequantized", repeats=2, variance="beta",
                   generator=gen(17))
    assert deq.details["decoder"] == "dequantized" and deq.details["repeats"] == 2
    assert deq.bpd == pytest.approx(bits_per_dim(deq.logp, 2, levels=256).mean().item(), rel=1e-9)
    assert abs(deq.bpd - rep["ode"].bpd) < 0.2
    with pytest.raises(ValueError, match="repeats"):
        ddpm_vlb(data.score_fn(sde), sde, x, bits=8, repeats=2)


@pytest.mark.parametrize("sde", [VESDE(), SubVPSDE()], ids=["ve", "subvp"])
def test_vlb_needs_a_variance_preserving_sde(sde):
    data = GaussianMixture.gaussian(2)
    with pytest.raises(ValueError, match=type(sde).__name__):
        ddpm_vlb(data.score_fn(sde), sde, data.sample(4, generator=gen(0)))


def test_bad_inputs_are_named():
    sde, data = VPSDE(N=10), GaussianMixture.gaussian(2)
    x = data.sample(4, generator=gen(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="variance"):
        ddpm_vlb(data.score_fn(sde), sde, x, variance="large")
    with pytest.raises(ValueError, match="t_sampling"):
        continuous_elbo(data.score_fn(sde), sde, x, t_sampling="cosine")
    with pytest.raises(ValueError, match="17-level grid"):
        ddpm_vlb(data.score_fn(sde), sde, x.clamp(-1, 1), levels=17)
    with pytest.raises(ValueError, match="repeats"):
        continuous_elbo(data.score_fn(sde), sde, x, repeats=2)
    with pytest.raises(ValueError, match="eps"):
        continuous_elbo(data.score_fn(sde), sde, x, eps=0.0)
    with pytest.raises(ValueError, match="samples"):
        continuous_elbo(data.score_fn(sde), sde, x, samples=0)
    with pytest.raises(ValueError, match="estimates"):
        likelihood_report(data.score_fn(sde), sde, x, estimates=("nll",))


def cli(*args):
    from click.testing import CliRunner

    from scoresde.cli import cli as main
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_reports_the_three_numbers(tmp_path):
    r = cli("likelihood", "--model", "oracle:gaussian", "--estimate", "all", "--n", 32, "--elbo-samples", 4,
            "--rtol", 1e-4, "--atol", 1e-4, "--quiet", "--out", tmp_path / "l.json")
    assert r.exit_code == 0, r.output
    for name in ("ode", "elbo", "vlb"):
        assert any(line.startswith(name) for line in r.output.splitlines()), r.output
    assert "lower bound on log p_eps of the reverse-SDE model" in r.output and "1000-step DDPM chain" in r.output
    assert "log p     " in r.output  # the ODE's own block is unchanged
    import json
    res = json.load(open(tmp_path / "l.json"))
    assert set(res["estimates"]) == {"elbo", "vlb"} and len(res["logp"]) == 32
    assert res["estimates"]["vlb"]["nfe"] > 0 and len(res["estimates"]["elbo"]["logp"]) == 32
    # a bound alone runs no ODE
    r = cli("likelihood", "--model", "oracle:gaussian", "--estimate", "elbo", "--n", 8, "--elbo-samples", 2,
            "--t-sampling", "uniform", "--quiet")
    assert r.exit_code == 0 and "elbo  bits/dim" in r.output and "log p     " not in r.output, r.output
    r = cli("likelihood", "--model", "oracle:gaussian", "--estimate", "vlb", "--vlb-terms", 4, "--vlb-variance", "beta",
            "--n", 8, "--quiet")
    assert r.exit_code == 0 and "4 sampled steps per point (logsnr, importance-weighted)" in r.output, r.output


def test_elbo_in_chunks_is_the_same_bound():
    # a small batch_size splits the points into chunks: same per-point distribution, same mean
    sde, data = VPSDE(beta_max=3.0), GaussianMixture.gaussian(2)
    x = draws_at_eps(data, sde, 600, gen(30))
    a = elbo_terms(data.score_fn(sde), sde, x, eps=EPS, samples=8, generator=gen(31))
    b = elbo_terms(data.score_fn(sde), sde, x, eps=EPS, samples=8, generator=gen(32), batch_size=40)
    assert b["nfe"] > 10 * a["nfe"] and b["evals"] == a["evals"] == 600 * 8 * 2
    d, se = mean_se(a["elbo"] - b["elbo"])
    assert abs(d) < 4 * se


@pytest.mark.parametrize("args, message", [
    (["--sde", "ve", "--estimate", "vlb"], "--estimate vlb: the DDPM bound needs a variance-preserving SDE"),
    (["--sde", "subvp", "--estimate", "all"], "got SubVPSDE("),
    (["--estimate", "elbo,nll"], "--estimate: unknown value 'nll'; choose from: ode, elbo, vlb, all"),
    (["--estimate", ","], "--estimate is empty"),
    (["--estimate", "vlb", "--bits", "8"], "needs values in [-1, 1]"),
])
def test_cli_bound_errors_are_one_line(args, message):
    r = cli("likelihood", "--model", "oracle:gaussian", "--n", 8, *args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], r.output


def test_vlb_on_a_discrete_beta_table_sde():
    # An SDE built on a β table (diffusers' schedules) has m, σ equal to the chain's at t = i/N, so
    # its oracle score is already the chain's exact ε: the bound equals the one above to rounding.
    DiscreteVPSDE = getattr(__import__("scoresde.sde", fromlist=["sde"]), "DiscreteVPSDE", None)
    if DiscreteVPSDE is None:
        pytest.skip("this tree has no DiscreteVPSDE")
    data = GaussianMixture.gaussian(2)
    x0 = data.sample(200, generator=gen(0), dtype=torch.float64)
    disc, vp = DiscreteVPSDE(N=1000), VPSDE(N=1000)
    a = vlb_terms(data.score_fn(disc), disc, x0, generator=gen(1))["nll"]
    b = vlb_terms(chain_score_fn(data, vp), vp, x0, generator=gen(1))["nll"]
    assert torch.allclose(a, b, rtol=0, atol=1e-9)


def vb_terms_bpd_transcribed(eps_model, betas, x0, noise, levels, cdf="tanh"):
    """improved-diffusion's calc_bpd_loop with FIXED_SMALL variance and clip_denoised=False, written
    out from its formulas in numpy (0-based t = 0 … T−1; t = 0 is the decoder): per t,
    pred_x0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε̂, model mean = posterior mean at pred_x0, log-variance
    = the clipped posterior log-variance; the KL is normal_kl, the decoder its discretized Gaussian
    with the tanh CDF (or cdf='exact', Φ itself); each mean over dimensions / ln 2; plus the prior
    KL at t = T−1.  Returns (prior + KL terms, decoder) per point, bits/dim."""
    import numpy as np
    T = len(betas)
    alphas = 1 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    post_logvar_clipped = np.log(np.append(post_var[1], post_var[1:]))
    coef1 = betas * np.sqrt(ac_prev) / (1 - ac)
    coef2 = (1 - ac_prev) * np.sqrt(alphas) / (1 - ac)

    def normal_kl(m1, lv1, m2, lv2):
        return 0.5 * (-1 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))

    def approx_cdf(x):
        if cdf == "exact":
            return norm.cdf(x)
        return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    def disc_ll(x, means, log_scales):
        c, inv = x - means, np.exp(-log_scales)
        cdf_plus, cdf_min = approx_cdf(inv * (c + 1 / (levels - 1))), approx_cdf(inv * (c - 1 / (levels - 1)))
        log_plus = np.log(np.maximum(cdf_plus, 1e-12))
        log_1m_min = np.log(np.maximum(1 - cdf_min, 1e-12))
        mid = np.log(np.maximum(cdf_plus - cdf_min, 1e-12))
        return np.where(x < -0.999, log_plus, np.where(x > 0.999, log_1m_min, mid))

    n, D = x0.shape
    total, decoder = np.zeros(n), np.zeros(n)
    for t in range(T):
        xt = np.sqrt(ac[t]) * x0 + np.sqrt(1 - ac[t]) * noise[:, t]
        eps = eps_model(xt, t)
        pred_x0 = np.sqrt(1 / ac[t]) * xt - np.sqrt(1 / ac[t] - 1) * eps
        model_mean = coef1[t] * pred_x0 + coef2[t] * xt
        if t == 0:
            decoder = -disc_ll(x0, model_mean, 0.5 * post_logvar_clipped[t]).mean(1) / np.log(2)
        else:
            true_mean = coef1[t] * x0 + coef2[t] * xt
            total += normal_kl(true_mean, post_logvar_clipped[t], model_mean, post_logvar_clipped[t]).mean(1) / np.log(2)
    prior = normal_kl(np.sqrt(ac[-1]) * x0, np.log(1 - ac[-1]), 0.0, 0.0).mean(1) / np.log(2)
    return total + prior, decoder


def test_vlb_agrees_with_a_transcription_of_vb_terms_bpd():
    # 8-bit data under the exact score of a Gaussian, N = 100; the same noise per (point, step).
    # The prior and KL terms agree to rounding; the decoder too when the transcription uses the exact
    # Φ.  With improved-diffusion's tanh approximation of Φ its decoder differs where the bin lies
    # in a tail of N(μ_θ, β̃_2) (the relative error of the approximation grows there).
    sde = VPSDE(N=100)
    data = GaussianMixture.gaussian(3, mean=[0.1, -0.3, 0.5], stds=[0.2, 0.3, 0.25])
    x = data.sample(50, generator=gen(20), dtype=torch.float64).clamp(-1, 1)
    x = 2 * torch.round((x + 1) / 2 * 255) / 255 - 1
    n, N, D = x.shape[0], sde.N, x.shape[1]
    noise = torch.randn((n * N, D), generator=gen(21), dtype=torch.float64).reshape(n, N, D)
    score = data.score_fn(sde)

    def eps_model(xt, t):  # 0-based t ↔ model time (t + 1)/N
        tt = torch.full((xt.shape[0],), (t + 1) / N, dtype=torch.float64)
        return (-sde.std(tt)[:, None] * score(torch.as_tensor(xt), tt)).numpy()

    args = (eps_model, sde.discrete_betas.numpy(), x.numpy(), noise.numpy(), 256)
    kl_want, dec_want = vb_terms_bpd_transcribed(*args, cdf="exact")
    out = vlb_terms(score, sde, x, levels=256, generator=gen(21), batch_size=n * N)
    bpd = 1 / (D * math.log(2))
    kl_got, dec_got = ((out["prior"] + out["kl"]) * bpd).numpy(), (out["decoder"] * bpd).numpy()
    assert abs(kl_got - kl_want).max() < 1e-10
    assert abs(dec_got - dec_want).max() < 1e-8
    assert abs((out["nll"] * bpd).numpy() - kl_got - dec_got).max() < 1e-12
    _, dec_tanh = vb_terms_bpd_transcribed(*args, cdf="tanh")
    assert 0 < abs(dec_tanh - dec_want).max() < 0.5

"""The multistep solvers (dpmpp_3m, dpmpp_2m_sde, deis, unipc, ipndm) against float64 transcriptions
written here from the papers' and anchors' formulas (their orders: test_solvers_orders.py)."""

import math

import numpy as np
import pytest
import torch

import solvers
from conftest import SDE_FACTORIES, gen
from scoresde.oracle import GaussianMixture

RING = GaussianMixture.ring()


# -- transcriptions ------------------------------------------------------------------------------------
def run(sde, solver, xT, **kw):
    return solvers.sample(RING.score_fn(sde), sde, x_T=xT, solver=solver, **kw)


def coefs(sde, ts):
    """m, σ, λ at the grid from the SDE's closed forms, and x̂_0 = (x + σ²s)/m."""
    m = [math.exp(float(sde.log_mean_coef(torch.tensor(t, dtype=torch.float64)))) for t in ts]
    sigma = [float(sde.std(torch.tensor(t, dtype=torch.float64))) for t in ts]

    def x0(x, i):
        sc = RING.score(x, torch.full((x.shape[0],), ts[i], dtype=x.dtype), sde)
        return (x + sigma[i] ** 2 * sc) / m[i]
    return m, sigma, [math.log(a / b) for a, b in zip(m, sigma)], x0


def solve_with_coefs(sde_name, solver, n, K, grid, **kw):
    """Our `solver` from a float64 prior draw (n samples, seed 0) on K steps of `grid`, and the
    closed-form coefficients of that grid for the transcription to replay:
    (sde, x_T, result, m, σ, λ, x̂_0)."""
    sde = SDE_FACTORIES[sde_name]()
    xT = sde.prior_sample((n, 2), generator=gen(0), dtype=torch.float64)
    res = run(sde, solver, xT, steps=K, grid=grid, **kw)
    return (sde, xT, res, *coefs(sde, res.t_grid.tolist()))


def lagrange_exp_weights(nodes, h):
    """∫_0^h e^{u−h} ℓ_j(u) du for the Lagrange basis on `nodes` (in u = λ − λ_i), by 12-point
    Gauss–Legendre (exact to round-off for these smooth integrands)."""
    xi, w = np.polynomial.legendre.leggauss(12)
    u = 0.5 * h * (xi + 1)
    out = []
    for j, nj in enumerate(nodes):
        ell = np.prod([(u - nk) / (nj - nk) for k, nk in enumerate(nodes) if k != j], axis=0)
        out.append(0.5 * h * float(np.sum(w * np.exp(u - h) * ell)))
    return out


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_dpmpp_3m_is_the_exponential_integrator_of_the_quadratic_interpolant(sde_name):
    """x_{i+1} = (σ_{i+1}/σ_i)x_i + m_{i+1}·∫_0^h e^{u−h} P(u) du, P the interpolant of x̂_0 in λ
    through the last 1, 2, 3 points (warm-up), orders as in dpmpp_3m's docstring."""
    K = 16
    sde, xT, res, m, sigma, lam, x0 = solve_with_coefs(sde_name, "dpmpp_3m", 128, K, "edm")
    x, hist = xT, []
    for i in range(K):
        hist = (hist + [(lam[i], x0(x, i))])[-3:]
        h = lam[i + 1] - lam[i]
        nodes = [l - lam[i] for l, _ in hist]
        if len(hist) == 2:  # second order in the Taylor form: x̂_i + u·(x̂_i − x̂_{i−1})/(λ_i − λ_{i−1})
            slope = (hist[1][1] - hist[0][1]) / (lam[i] - hist[0][0])
            xi_, w = np.polynomial.legendre.leggauss(12)
            u = 0.5 * h * (xi_ + 1)
            c0 = 0.5 * h * float(np.sum(w * np.exp(u - h)))
            c1 = 0.5 * h * float(np.sum(w * np.exp(u - h) * u))
            x = sigma[i + 1] / sigma[i] * x + m[i + 1] * (c0 * hist[1][1] + c1 * slope)
        else:
            ws = lagrange_exp_weights(nodes, h)
            x = sigma[i + 1] / sigma[i] * x + m[i + 1] * sum(c * v for c, (_, v) in zip(ws, hist))
    assert (res.x - x).abs().max() <= 1e-10


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_dpmpp_3m_match_anchors_is_dpm_solvers_formula(sde_name):
    """DPM-Solver's `multistep_dpm_solver_third_update` (dpmsolver++), as its code writes it."""
    K = 16
    sde, xT, res, m, sigma, lam, x0 = solve_with_coefs(sde_name, "dpmpp_3m", 128, K, "logsnr", match_anchors=True)
    x, ms = xT, []
    for i in range(K):
        ms.append(x0(x, i))
        h = lam[i + 1] - lam[i]
        phi_1 = math.expm1(-h)
        if i == 0:
            x = sigma[i + 1] / sigma[i] * x - m[i + 1] * phi_1 * ms[-1]
        elif i == 1:
            r0 = (lam[i] - lam[i - 1]) / h
            D1 = (ms[-1] - ms[-2]) / r0
            x = sigma[i + 1] / sigma[i] * x - m[i + 1] * phi_1 * ms[-1] + m[i + 1] * (phi_1 / h + 1.0) * D1
        else:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            D1_0, D1_1 = (ms[-1] - ms[-2]) / r0, (ms[-2] - ms[-3]) / r1
            D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
            D2 = (D1_0 - D1_1) / (r0 + r1)
            phi_2 = phi_1 / h + 1.0
            phi_3 = phi_2 / h - 0.5
            x = sigma[i + 1] / sigma[i] * x - m[i + 1] * phi_1 * ms[-1] + m[i + 1] * phi_2 * D1 - m[i + 1] * phi_3 * D2
    assert (res.x - x).abs().max() <= 1e-10


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("eta, solver_type", [(1.0, "midpoint"), (0.5, "heun")])
def test_dpmpp_2m_sde_is_k_diffusions_sampler(sde_name, eta, solver_type):
    """k-diffusion's `sample_dpmpp_2m_sde` in EDM's variables (x̃ = x/m, σ̃ = σ/m), with our
    convention of no noise on the last step."""
    K = 12
    sde, xT, res, m, sigma, _, x0 = solve_with_coefs(sde_name, "dpmpp_2m_sde", 128, K, "logsnr", eta=eta,
                                                 solver_type=solver_type, generator=gen(3))
    sigma_tilde = [b / a for a, b in zip(m, sigma)]
    g = gen(3)
    x, old, h_last = xT / m[0], None, None
    for i in range(K):
        denoised = x0(m[i] * x, i)
        t, t_next = -math.log(sigma_tilde[i]), -math.log(sigma_tilde[i + 1])
        h = t_next - t
        eta_h = eta * h
        x = sigma_tilde[i + 1] / sigma_tilde[i] * math.exp(-eta_h) * x + (-math.expm1(-h - eta_h)) * denoised
        if old is not None:
            r = h_last / h
            if solver_type == "heun":
                x = x + ((-math.expm1(-h - eta_h)) / (-h - eta_h) + 1) * (1 / r) * (denoised - old)
            else:
                x = x + 0.5 * (-math.expm1(-h - eta_h)) * (1 / r) * (denoised - old)
        if i < K - 1:
            z = torch.randn(x.shape, generator=g, dtype=x.dtype)
            x = x + z * sigma_tilde[i + 1] * math.sqrt(-math.expm1(-2 * eta_h))
        old, h_last = denoised, h
    assert (res.x - m[-1] * x).abs().max() <= 1e-10


def test_dpmpp_2m_sde_without_noise_is_dpmpp_2m():
    sde = SDE_FACTORIES["vp"]()
    xT = sde.prior_sample((128, 2), generator=gen(0), dtype=torch.float64)
    a = run(sde, "dpmpp_2m_sde", xT, steps=20, grid="logsnr", eta=0.0).x
    b = run(sde, "dpmpp_2m", xT, steps=20, grid="logsnr", lower_order_final=False).x
    assert (a - b).abs().max() <= 1e-10


def variable_step_adams_bashforth(xT, m, sigma, x0, order):
    """x̃_{i+1} = x̃_i + ∫ P(σ̃) dσ̃ on the grid of (m, σ), P the polynomial through the last `order`
    (σ̃, ε̂) pairs, integrated with numpy's polyfit/polyint; returns x = m·x̃ at the end."""
    poly = np.polynomial.polynomial
    st = [b / a for a, b in zip(m, sigma)]
    x, hist = xT / m[0], []
    for i in range(len(m) - 1):
        hist = (hist + [(st[i], eps_of(x, m, sigma, x0, i))])[-order:]
        vals = torch.stack([e for _, e in hist]).reshape(len(hist), -1).numpy()
        I = poly.polyint(poly.polyfit(np.array([q for q, _ in hist]), vals, len(hist) - 1))
        x = x + torch.from_numpy(np.asarray(poly.polyval(st[i + 1], I) - poly.polyval(st[i], I)).T.reshape(x.shape))
    return m[-1] * x


def eps_of(x_tilde, m, sigma, x0, i):
    """ε̂ = (x − m·x̂_0)/σ at x = m_i·x̃, grid point i."""
    return (m[i] * x_tilde - m[i] * x0(m[i] * x_tilde, i)) / sigma[i]


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_sigma_interpolant_is_variable_step_adams_bashforth_in_sigma(sde_name, order):
    """x̃_{i+1} = x̃_i + ∫ P(σ̃) dσ̃, P the polynomial through the last `order` (σ̃, ε̂) pairs,
    integrated with numpy's polyfit/polyint (order 1 is EDM's Euler)."""
    K = 16
    sde, xT, res, m, sigma, _, x0 = solve_with_coefs(sde_name, "deis", 64, K, "edm", order=order,
                                                     interpolant="sigma")
    x = variable_step_adams_bashforth(xT, m, sigma, x0, order)
    assert (res.x - x).abs().max() <= 1e-9 * (1 + x.abs().max())
    if order == 1:
        assert (res.x - run(sde, "euler", xT, steps=K, grid="edm").x).abs().max() <= 1e-10


def sigma_tilde_uniform_grid(sde, K):
    """K steps equally spaced in σ̃ = σ/m from T to eps (λ = −log σ̃)."""
    ends = torch.tensor([sde.T, sde.default_eps], dtype=torch.float64)
    st = torch.exp(-sde.log_snr(ends))
    inner = sde.t_from_log_snr(-torch.log(torch.linspace(float(st[0]), float(st[1]), K + 1, dtype=torch.float64)[1:-1]))
    return torch.cat([ends[:1], inner, ends[1:]])


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_on_equal_sigma_steps_is_adams_bashforth(sde_name, order):
    """On a grid uniform in σ̃ the equal-step weights are the exact ones: ipndm equals the
    variable-step Adams–Bashforth written out with numpy (the polynomial through the last p
    (σ̃, ε̂) pairs, integrated), and deis with interpolant='sigma' (order ≤ 3; K ≥ 15, so deis keeps
    its order to the end)."""
    K = 16
    sde = SDE_FACTORIES[sde_name]()
    ts = sigma_tilde_uniform_grid(sde, K)
    xT = sde.prior_sample((64, 2), generator=gen(0), dtype=torch.float64)
    res = run(sde, "ipndm", xT, grid=ts, order=order)
    m, sigma, _, x0 = coefs(sde, ts.tolist())
    x = variable_step_adams_bashforth(xT, m, sigma, x0, order)
    assert (res.x - x).abs().max() <= 1e-9 * (1 + x.abs().max())
    if order <= 3:
        deis = run(sde, "deis", xT, grid=ts, order=order, interpolant="sigma").x
        assert (res.x - deis).abs().max() <= 1e-9 * (1 + x.abs().max())


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_ipndm_keeps_equal_step_weights_on_any_grid(sde_name):
    """On the edm grid (unequal steps in σ̃) ipndm order 3 is x̃ += h·(23ε̂_i − 16ε̂_{i−1} + 5ε̂_{i−2})/12
    after the order-1 and order-2 (3ε̂_i − ε̂_{i−1})/2 warm-up steps, which differs from the
    variable-step deis; order 1 is EDM's Euler."""
    K = 12
    sde, xT, res, m, sigma, _, x0 = solve_with_coefs(sde_name, "ipndm", 64, K, "edm")
    st = [b / a for a, b in zip(m, sigma)]
    weights = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12]}
    x, hist = xT / m[0], []
    for i in range(K):
        hist = [eps_of(x, m, sigma, x0, i)] + hist[:2]
        x = x + (st[i + 1] - st[i]) * sum(w * e for w, e in zip(weights[len(hist)], hist))
    assert (res.x - m[-1] * x).abs().max() <= 1e-10 * (1 + x.abs().max())
    deis = run(sde, "deis", xT, steps=K, grid="edm", order=3, interpolant="sigma", lower_order_final=False).x
    assert (res.x - deis).abs().max() > 1e-4
    euler = run(sde, "euler", xT, steps=K, grid="edm").x
    assert (run(sde, "ipndm", xT, steps=K, grid="edm", order=1).x - euler).abs().max() <= 1e-10


def diffusers_deis_transcription(score_fn, sde, xT, ts, order):
    """diffusers' DEISMultistepScheduler ('logrho') update, written out in float64 on the grid ts:
    ε̂ interpolated by the Lagrange polynomial in L = log ρ, ρ = σ̃ = σ/m, and integrated in ρ,
        x̃_{i+1} = x̃_i + Σ_j [A_j(ρ_{i+1}) − A_j(ρ_i)]·ε̂_{i−j},
    with the antiderivatives (b the node's log ρ, c, d the others')
        one other node:  A(ρ) = ρ(L − c − 1)/(b − c),
        two other nodes: A(ρ) = ρ[(L − c)(L − d) − (2L − c − d) + 2]/((b − c)(b − d));
    first order on the first step, at most second on the second, and (lower_order_final, K < 15)
    first order on the last step and at most second on the one before."""
    K = len(ts) - 1
    m = [math.exp(float(sde.log_mean_coef(torch.tensor(t, dtype=torch.float64)))) for t in ts]
    sig = [float(sde.std(torch.tensor(t, dtype=torch.float64))) for t in ts]
    rho = [b / a for a, b in zip(m, sig)]

    def A(r, b, others):
        L = math.log(r)
        if not others:
            return r
        if len(others) == 1:
            c, = others
            return r * (L - c - 1) / (b - c)
        c, d = others
        return r * ((L - c) * (L - d) - (2 * L - c - d) + 2) / ((b - c) * (b - d))

    x, eps = xT / m[0], []
    for i in range(K):
        xi = m[i] * x
        eps.append(-sig[i] * score_fn(xi, torch.full((xi.shape[0],), ts[i], dtype=xi.dtype)))
        p = min(order, i + 1)
        if K < 15:
            p = min(p, K - i)
        logs = [math.log(rho[i - j]) for j in range(p)]
        for j in range(p):
            others = logs[:j] + logs[j + 1:]
            x = x + (A(rho[i + 1], logs[j], others) - A(rho[i], logs[j], others)) * eps[i - j]
    return m[-1] * x


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("K", [10, 16])
def test_deis_log_sigma_is_diffusers_deis_update(sde_name, order, K):
    """On the ring (a nonlinear ε̂), ours with interpolant='log_sigma' (the default) is the
    transcribed diffusers update path by path, with (K = 10) and without (K = 16) its lower-order
    final steps."""
    sde, xT, res, *_ = solve_with_coefs(sde_name, "deis", 64, K, "edm", order=order)
    want = diffusers_deis_transcription(RING.score_fn(sde), sde, xT, res.t_grid.tolist(), order)
    assert (res.x - want).abs().max() <= 1e-10 * (1 + want.abs().max())


# Measured by experiments/deis_interpolant.py (the 4-D Gaussian, 64 draws, K = 20…160): slopes of the
# log-σ̃ form over K = 20…160.  edm order 3 is still pre-asymptotic at K = 20 (2.28 over 20→40,
# 2.96 over 80→160); log-SNR order 3 superconverges on this flow.
DEIS_SLOPES = {("vp", "edm", 2): 2.02, ("vp", "edm", 3): 2.65, ("vp", "logsnr", 2): 1.95, ("vp", "logsnr", 3): 3.76,
               ("ve", "edm", 2): 2.02, ("ve", "edm", 3): 2.77, ("ve", "logsnr", 2): 1.96, ("ve", "logsnr", 3): 3.24}


@pytest.mark.parametrize("sde_name, grid, order", sorted(DEIS_SLOPES))
def test_deis_is_no_less_accurate_than_diffusers_deis(sde_name, grid, order):
    """On the Gaussian's closed-form flow, float64, same grid and x_T: our default DEIS error is at
    most the transcribed diffusers update's at every K, its slope is the measured one, and the σ̃
    interpolant (interpolant='sigma') is less accurate at K = 160 (why log σ̃ is the default)."""
    sde, data = SDE_FACTORIES[sde_name](), GaussianMixture.gaussian(4)
    xT = sde.prior_sample((64, 4), generator=gen(0), dtype=torch.float64)
    eps, Ks = sde.default_eps, (20, 40, 80, 160)
    truth = data.flow(xT, sde.T, eps, sde)
    ours, theirs, sigma_form = [], [], []
    for K in Ks:
        res = solvers.sample(data.score_fn(sde), sde, x_T=xT, solver="deis", steps=K, grid=grid, eps=eps, order=order)
        ours.append(float((res.x - truth).abs().max()))
        want = diffusers_deis_transcription(data.score_fn(sde), sde, xT, res.t_grid.tolist(), order)
        theirs.append(float((want - truth).abs().max()))
        alt = solvers.sample(data.score_fn(sde), sde, x_T=xT, solver="deis", steps=K, grid=grid, eps=eps,
                             order=order, interpolant="sigma")
        sigma_form.append(float((alt.x - truth).abs().max()))
    assert all(o <= t * (1 + 1e-6) + 1e-13 for o, t in zip(ours, theirs)), (ours, theirs)
    slope = -np.polyfit(np.log(Ks), np.log(ours), 1)[0]
    assert abs(slope - DEIS_SLOPES[sde_name, grid, order]) < 0.05, (slope, ours)
    assert sigma_form[-1] > 2 * ours[-1], (sigma_form, ours)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("order, variant", [(1, "bh2"), (2, "bh1"), (2, "bh2"), (3, "bh2")])
def test_unipc_is_the_papers_predictor_corrector(sde_name, order, variant):
    """UniPC (Zhao et al. 2023, Alg. 2/3 with the data prediction): written out here as a
    predict–evaluate–correct loop over explicit R·ρ = g/B systems."""
    K = 16
    sde, xT, res, m, sigma, lam, x0 = solve_with_coefs(sde_name, "unipc", 64, K, "logsnr", order=order,
                                                   variant=variant)

    def phis(hh, n):  # g_k = hh·φ_{k+1}(hh)·k!, k = 1..n, from φ_1 = (e^{hh} − 1)/hh
        phi = [math.expm1(hh) / hh]
        for k in range(1, n + 1):
            phi.append((phi[-1] - 1 / math.factorial(k)) / hh)
        return [hh * phi[k] * math.factorial(k) for k in range(1, n + 1)]

    def update(j, xj, ms, p, m_new=None):
        h = lam[j + 1] - lam[j]
        hh = -h
        B = hh if variant == "bh1" else math.expm1(hh)
        base = sigma[j + 1] / sigma[j] * xj - m[j + 1] * math.expm1(hh) * ms[j]
        rk = [(lam[j - k] - lam[j]) / h for k in range(1, p)]
        D = [(ms[j - k] - ms[j]) / r for k, r in zip(range(1, p), rk)]
        if m_new is not None:
            rk, D = rk + [1.0], D + [m_new - ms[j]]
        n = len(D)
        if n == 0:
            return base
        if n == 1:  # UniP-2 and UniC-1: ρ = ½, as the paper's code
            rho = [0.5]
        else:
            R = np.vander(np.array(rk), n, increasing=True).T
            rho = np.linalg.solve(R, np.array(phis(hh, n)) / B)
        return base - m[j + 1] * B * sum(r * d for r, d in zip(rho, D))

    x, ms, p_prev = xT, {}, 0
    for i in range(K):
        mi = x0(x, i)
        if i > 0:
            x = update(i - 1, x_prev, ms, p_prev, m_new=mi)
        ms[i] = mi
        p = min(order, i + 1)
        x_prev, p_prev = x, p
        x = update(i, x, ms, p)
    assert (res.x - x).abs().max() <= 1e-10
    if order == 1:
        plain = run(sde, "unipc", xT, steps=K, grid="logsnr", order=1, corrector=False).x
        assert (plain - run(sde, "ddim", xT, steps=K, grid="logsnr", eps=sde.default_eps).x).abs().max() <= 1e-10

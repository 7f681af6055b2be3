"""`pc`: Song et al.'s predictor–corrector sampler, against score_sde's loop written out here, and
its behaviour on VE at few steps."""

import math

import pytest
import torch

import solvers
from conftest import SDE_FACTORIES, gen
from scoresde.evaluation.metrics import mode_metrics
from scoresde.oracle import GaussianMixture

RING = GaussianMixture.ring(8, 4.0, 0.2)


def test_pc_on_ve_at_five_steps_lands_on_the_modes():
    """With an Euler–Maruyama predictor, 5 uniform steps on VE multiply far-from-data samples by
    1 − 2·ln(σ_max/σ_min)·Δt ≈ −2.4 per step: they ended at |x| ≈ 10³, every one off the ring."""
    sde = SDE_FACTORIES["ve"]()
    x = solvers.sample(RING.score_fn(sde), sde, shape=(2000, 2), solver="pc", steps=5, generator=gen(0)).x
    assert torch.isfinite(x).all()
    r = x.norm(dim=1)
    assert 3.5 < float(r.median()) < 4.5, float(r.median())
    assert mode_metrics(x, RING)["off_mode"] < 0.3


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("predictor", ["reverse_diffusion", "euler_maruyama"])
def test_pc_is_score_sdes_pc_sampler(sde_name, predictor):
    """score_sde's `pc_sampler` on our grid: at each t_i the Langevin corrector (ε = 2α(snr·mean‖z‖/
    mean‖s‖)², α = m_{i+1}²/m_i², 1 on VE), then ReverseDiffusionPredictor (x − f_i + G_i²s + G_i z,
    f_i = (a − 1)x, G_i² = σ_i² − a²σ_{i+1}², a = m_i/m_{i+1}) or EulerMaruyamaPredictor; no noise on
    the last predictor step (their x_mean)."""
    sde = SDE_FACTORIES[sde_name]()
    xT = sde.prior_sample((64, 2), generator=gen(0), dtype=torch.float64)
    K, snr = 8, 0.16
    res = solvers.sample(RING.score_fn(sde), sde, x_T=xT, solver="pc", steps=K, generator=gen(3),
                         predictor=predictor)
    ts = res.t_grid
    m, s = (v.tolist() for v in sde.marginal(ts))
    g2 = [float(sde.diffusion(ts[i:i + 1])) ** 2 for i in range(K + 1)]
    f = [float(sde.drift(torch.ones(1, 1, dtype=torch.float64), ts[i:i + 1])) for i in range(K + 1)]
    g, x = gen(3), xT
    for i in range(K):
        t = ts[i].expand(x.shape[0])
        alpha = 1.0 if sde_name == "ve" else (m[i] / m[i + 1]) ** 2
        grad = RING.score(x, t, sde)
        z = torch.randn(x.shape, generator=g, dtype=x.dtype)
        eps = 2 * alpha * (snr * z.norm(dim=1).mean() / grad.norm(dim=1).mean()) ** 2
        x = x + eps * grad + (2 * eps).sqrt() * z
        score = RING.score(x, t, sde)
        if predictor == "reverse_diffusion":
            a = m[i] / m[i + 1]
            G2 = s[i] ** 2 - a * a * s[i + 1] ** 2
            x, G = x - (a - 1) * x + G2 * score, math.sqrt(G2)
        else:
            dt = float(ts[i] - ts[i + 1])
            x, G = x - (f[i] * x - g2[i] * score) * dt, math.sqrt(g2[i] * dt)
        if i < K - 1:
            x = x + G * torch.randn(x.shape, generator=g, dtype=x.dtype)
    assert (res.x - x).abs().max() <= 1e-10


def test_an_unknown_predictor_is_named():
    sde = SDE_FACTORIES["vp"]()
    with pytest.raises(solvers.SolverError, match="predictor must be one of 'reverse_diffusion', 'euler_maruyama', got 'rk4'"):
        solvers.sample(RING.score_fn(sde), sde, shape=(4, 2), solver="pc", steps=3, predictor="rk4")

"""Prediction targets and loss weights: one weighting gives one loss whatever the network predicts,
Min-SNR-γ and EDM match their papers' own formulas, and a network of any target is the same score."""
import math

import pytest
import torch

from conftest import SDE_FACTORIES
from scoresde.convert import prediction_from_eps
from scoresde.oracle import GaussianMixture
from scoresde.training.config import ConfigError, from_dict
from scoresde.training.losses import WEIGHTINGS, dsm_loss, eps_weight, regression_target, weighted_error
from scoresde.training.nn import ScoreModel

TARGETS = ("epsilon", "x0", "v")


def _case(sde, seed=0, B=64, D=3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    z = torch.randn(B, D, generator=g, dtype=torch.float64)
    t = torch.linspace(1e-4, 1.0, B, dtype=torch.float64)
    m, s = torch.exp(sde.log_mean_coef(t)), sde.std(t)
    xt = m[:, None] * x0 + s[:, None] * z
    eps_hat = z + 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)  # some network's ε̂
    return x0, z, t, m, s, xt, eps_hat


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_the_same_output_converted_gives_the_same_loss_whatever_the_target(sde_name, weighting):
    sde = SDE_FACTORIES[sde_name]()
    x0, z, t, m, s, xt, eps_hat = _case(sde)
    w = eps_weight(weighting, sde, t, m, s, snr_gamma=5.0, sigma_data=0.5).double()
    want = w * (eps_hat - z).pow(2).mean(1)  # the definition: λ_ε·‖ε̂ − ε‖²/D
    for target in TARGETS + ("denoiser",):
        out = regression_target(target, eps_hat, xt, m, s, 0.5)  # what that network outputs for this ε̂
        got = weighted_error(target, out.double(), xt, z, m, s, w, sigma_data=0.5).double()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0, msg=f"{target} under {weighting}")


def test_min_snr_weights_are_the_papers_for_each_target():
    """Hang et al.: with SNR = ᾱ/(1 − ᾱ), x̂_0-loss min(SNR, γ), ε-loss min(SNR, γ)/SNR, v-loss
    min(SNR, γ)/(SNR + 1): the weight each target's own squared error gets."""
    sde, gamma = SDE_FACTORIES["vp"](), 5.0
    x0, z, t, m, s, xt, eps_hat = _case(sde, B=200)
    abar = m ** 2
    snr = abar / (1 - abar)
    paper = {"epsilon": torch.minimum(snr, torch.tensor(gamma)) / snr, "x0": torch.minimum(snr, torch.tensor(gamma)),
             "v": torch.minimum(snr, torch.tensor(gamma)) / (snr + 1)}
    assert (snr > gamma).any() and (snr < gamma).any()  # both sides of the min are exercised
    w = eps_weight("min_snr", sde, t, m, s, snr_gamma=gamma).double()
    for target in TARGETS:
        out = prediction_from_eps(target, eps_hat, xt, m, s)
        own = prediction_from_eps(target, z, xt, m, s)
        per = (out - own).pow(2).mean(1)  # that target's own error
        torch.testing.assert_close(weighted_error(target, out, xt, z, m, s, w).double(), paper[target] * per,
                                   rtol=1e-5, atol=0, msg=target)
    # min, not max: the x̂_0 weight never exceeds γ, and where SNR < γ the ε weight is exactly 1
    x0w = w * snr
    assert float(x0w.max()) <= gamma * (1 + 1e-6)
    assert torch.allclose(w[snr < gamma], torch.ones_like(w[snr < gamma]))


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_edm_weight_is_lambda_sigma_on_the_denoiser_error(sde_name):
    """EDM: λ(σ̃) = (σ̃² + σ_d²)/(σ̃σ_d)² on ‖D − y‖² in σ-space, x/m with σ̃ = σ/m, where D = x̂_0."""
    sde, sd = SDE_FACTORIES[sde_name](), 0.5
    x0, z, t, m, s, xt, eps_hat = _case(sde)
    sig = s / m
    lam = (sig ** 2 + sd ** 2) / (sig * sd) ** 2
    x0_hat = (xt - s[:, None] * eps_hat) / m[:, None]  # the denoiser, computed here from its definition
    want = lam * (x0_hat - x0).pow(2).mean(1)
    w = eps_weight("edm", sde, t, m, s, sigma_data=sd).double()
    torch.testing.assert_close(w * (eps_hat - z).pow(2).mean(1), want, rtol=1e-5, atol=0)


def test_likelihood_weight_is_g2_times_the_score_error():
    sde = SDE_FACTORIES["vp"]()
    x0, z, t, m, s, xt, eps_hat = _case(sde)
    score_err = (-eps_hat / s[:, None] + z / s[:, None]).pow(2).mean(1)  # ‖s_θ − ∇log p_{0t}‖²
    w = eps_weight("likelihood", sde, t, m, s).double()
    torch.testing.assert_close(w * (eps_hat - z).pow(2).mean(1), sde.g2(t) * score_err, rtol=1e-5, atol=0)


class _OracleNet(torch.nn.Module):
    """A 'network' that outputs the exact `target` of a mixture: undoing ScoreModel's input scaling
    and converting the oracle's exact ε, so its ScoreModel must reproduce the oracle's score."""

    def __init__(self, oracle, sde, target, sigma_data):
        super().__init__()
        self.oracle, self.sde, self.target, self.sd = oracle, sde, target, sigma_data

    def forward(self, x_in, t):
        m, s = torch.exp(self.sde.log_mean_coef(t)), self.sde.std(t)
        x = x_in / torch.rsqrt(m ** 2 * self.sd ** 2 + s ** 2)[:, None]
        eps = -s[:, None] * self.oracle.score(x, t, self.sde)
        return regression_target(self.target, eps, x, m, s, self.sd)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("target", TARGETS + ("denoiser",))
def test_a_network_of_any_target_is_the_same_score(sde_name, target):
    sde, oracle = SDE_FACTORIES[sde_name](), GaussianMixture.ring(8)
    model = ScoreModel(_OracleNet(oracle, sde, target, 2.0), sde, sigma_data=2.0, prediction=target)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    t = torch.linspace(1e-3, 1, 50, dtype=torch.float64)
    torch.testing.assert_close(model(x, t), oracle.score(x, t, sde), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("target", TARGETS + ("denoiser",))
def test_dsm_loss_of_the_exact_model_is_the_same_for_every_target(target):
    """The loss is a number about ε̂: the exact model scores the same mean whatever it predicts."""
    sde, oracle = SDE_FACTORIES["vp"](), GaussianMixture.ring(8)
    losses = {}
    for tg in TARGETS + ("denoiser",):
        model = ScoreModel(_OracleNet(oracle, sde, tg, 1.0), sde, prediction=tg)
        x0 = oracle.sample(256, torch.Generator().manual_seed(0), dtype=torch.float64)
        losses[tg] = float(dsm_loss(model, x0, torch.Generator().manual_seed(3), weighting="min_snr"))
    assert math.isclose(losses[target], losses["epsilon"], rel_tol=1e-5)


def test_config_weighting_keys():
    assert from_dict({}).train.weighting == "epsilon" and from_dict({}).model.prediction == "epsilon"
    old = from_dict({"train": {"likelihood_weighting": True}})  # the older spelling keeps working
    assert old.train.weighting == "likelihood" and old.train.likelihood_weighting
    assert from_dict(old.to_dict()).to_dict() == old.to_dict()
    new = from_dict({"train": {"weighting": "likelihood"}})
    assert new.train.likelihood_weighting and new.to_dict() == old.to_dict()
    assert not from_dict({"train": {"weighting": "min_snr"}}).train.likelihood_weighting
    with pytest.raises(ConfigError, match="likelihood_weighting = true contradicts train.weighting = 'min_snr'"):
        from_dict({"train": {"likelihood_weighting": True, "weighting": "min_snr"}})
    with pytest.raises(ConfigError, match="train.weighting = 'max_snr' is not allowed; choose one of: epsilon"):
        from_dict({"train": {"weighting": "max_snr"}})
    with pytest.raises(ConfigError, match="model.prediction = 'sample' is not allowed"):
        from_dict({"model": {"prediction": "sample"}})
    with pytest.raises(ConfigError, match="train.snr_gamma must be finite and > 0"):
        from_dict({"train": {"snr_gamma": 0}})


@pytest.mark.parametrize("prediction, weighting, loss", [("x0", "min_snr", "dsm"), ("v", "edm", "dsm"),
                                                         ("v", "v", "ddpm"), ("denoiser", "edm", "dsm")])
def test_each_target_trains_and_its_checkpoint_records_it(tmp_path, prediction, weighting, loss):
    from scoresde.training.checkpoint import load_score_model
    from scoresde.training.trainer import Trainer

    cfg = from_dict({"data": {"name": "ring", "batch_size": 64}, "model": {"hidden": 32, "blocks": 1,
                                                                         "prediction": prediction},
                     "train": {"steps": 30, "warmup": 5, "ckpt_every": 0, "log_every": 10, "weighting": weighting,
                               "loss": loss}})
    losses = Trainer(cfg, str(tmp_path), progress=False, previews=False).train()
    assert all(math.isfinite(v) for v in losses) and sum(losses[-5:]) < sum(losses[:5])
    model = load_score_model(str(tmp_path / "checkpoint.pt"))
    assert model.score_fn.prediction == prediction


def test_a_checkpoint_without_the_prediction_key_is_an_epsilon_model_and_resumes(tmp_path):
    from scoresde.training.checkpoint import load_checkpoint, load_score_model, save_checkpoint
    from scoresde.training.trainer import Trainer

    cfg = from_dict({"data": {"name": "ring", "batch_size": 32}, "model": {"hidden": 16, "blocks": 1},
                     "train": {"steps": 4, "warmup": 1, "ckpt_every": 0}})
    Trainer(cfg, str(tmp_path), progress=False, previews=False).train(steps=2)
    path = str(tmp_path / "checkpoint.pt")
    ck = load_checkpoint(path)
    for sec, keys in (("model", ("prediction",)), ("train", ("weighting", "snr_gamma"))):
        for k in keys:
            del ck["config"][sec][k]  # as a checkpoint written before these keys existed
    save_checkpoint(path, {k: v for k, v in ck.items() if k not in ("format", "version")})
    assert load_score_model(path).score_fn.prediction == "epsilon"
    assert len(Trainer(cfg, str(tmp_path), resume=True, progress=False, previews=False).train()) == 2

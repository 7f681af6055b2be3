"""Denoising score matching for a network that predicts ε, x̂_0 or v, under one stated family of
per-time loss weights (Ho et al. 2020; Song et al. 2021; Hang et al. 2023; Karras et al. 2022).

    t ~ U(t_eps, T),  z ~ N(0, I),  x_t = m(t)·x_0 + σ(t)·z,
    L = E[ λ_ε(t) · ‖ε̂_θ(x_t, t) − z‖² ] / D

Every weighting is written once, as λ_ε, the weight on the ε-error (eps_weight).  A network that
predicts another target F* regresses it directly, with the weight that makes the loss the same
number: ‖ε̂ − ε‖² = k(t)·‖F − F*‖² (target_factor), so it is trained on λ_ε·k·‖F − F*‖².

The discrete DDPM loss draws an integer i ~ U{1 … N}, uses the table ᾱ_i and evaluates the
network at t = i/N.
"""
from __future__ import annotations

import functools

import torch

from scoresde._checks import bcast
from scoresde.convert import denoiser_coefficients, prediction_from_eps

WEIGHTINGS = ("epsilon", "likelihood", "min_snr", "edm", "x0", "v")


def _f32(*xs):
    """At least float32 (a bf16 output under autocast is scored in fp32; float64 stays float64)."""
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in xs), torch.float32)
    return [x.to(dtype) for x in xs]


def eps_weight(weighting: str, sde, t: torch.Tensor, mean_coef: torch.Tensor, std: torch.Tensor,
               snr_gamma: float = 5.0, sigma_data: float = 1.0) -> torch.Tensor:
    """λ_ε(t), the weight on ‖ε̂ − ε‖², shape (B,).  With SNR = m²/σ²:

      epsilon     1                                 uniform in ε (DDPM's L_simple, score_sde's default)
      likelihood  g²/σ²                             = g²·‖s_θ − ∇log p_{0t}‖²/‖ε̂ − ε‖² (Song et al. 2021)
      min_snr     min(SNR, γ)/SNR                   Min-SNR-γ (Hang et al. 2023), γ = snr_gamma
      edm         (σ̃² + σ_d²)/σ_d²,  σ̃ = σ/m        EDM's λ(σ̃) = (σ̃² + σ_d²)/(σ̃σ_d)² on ‖D − x_0‖²
      x0          1/SNR                             uniform in x̂_0
      v           (m² + σ²)²/m²                     uniform in v

    Each line follows from the error identities (x_t fixed, so ε̂ − ε, x̂_0 − x_0 and v̂ − v are
    all proportional; with x̂_0 = (x − σε̂)/m and v = m·ε − σ·x_0):

      x̂_0 − x_0 = −(σ/m)·(ε̂ − ε)                   ‖x̂_0 − x_0‖² = ‖ε̂ − ε‖²/SNR
      v̂ − v = m·(ε̂ − ε) + (σ²/m)·(ε̂ − ε)           ‖v̂ − v‖² = (m² + σ²)²/m² · ‖ε̂ − ε‖²

    so the same weighting on the other targets is λ_x0 = λ_ε·SNR and λ_v = λ_ε·m²/(m² + σ²)²
    (on VP, m² + σ² = 1: λ_v = λ_ε·m² = λ_ε·SNR/(SNR + 1)).  For Min-SNR-γ these are the paper's
    min(SNR, γ)/SNR (ε), min(SNR, γ) (x̂_0) and min(SNR, γ)/(SNR + 1) (v, on VP).

    EDM's σ-space is x/m with noise level σ̃ = σ/m (VP and sub-VP; VE has m = 1, σ̃ = σ): its
    denoiser D is x̂_0, so λ(σ̃)·‖x̂_0 − x_0‖² = λ(σ̃)·σ̃²·‖ε̂ − ε‖² = (σ̃² + σ_d²)/σ_d²·‖ε̂ − ε‖².
    σ_d is the model's sigma_data.  Only the weight is EDM's: t stays uniform (EDM draws
    ln σ̃ ~ N(−1.2, 1.2²)).
    """
    m, s = _f32(mean_coef, std)
    if weighting == "epsilon":
        return torch.ones_like(s)
    if weighting == "likelihood":
        return sde.g2(t).to(s.dtype) / s ** 2
    snr = (m / s) ** 2
    if weighting == "min_snr":
        return torch.clamp(snr, max=snr_gamma) / snr
    if weighting == "edm":
        return ((s / m) ** 2 + sigma_data ** 2) / sigma_data ** 2
    if weighting == "x0":
        return 1 / snr
    if weighting == "v":
        return (m ** 2 + s ** 2) ** 2 / m ** 2
    raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")


def target_factor(prediction: str, mean_coef: torch.Tensor, std: torch.Tensor, sigma_data: float = 1.0
                  ) -> torch.Tensor:
    """k(t) with ‖ε̂ − ε‖² = k·‖F − F*‖² for a network F predicting `prediction` (see eps_weight):
    1 for ε, SNR = m²/σ² for x̂_0, m²/(m² + σ²)² for v, and (m·b/σ)² = σ_d²/(σ̃² + σ_d²) for EDM's
    denoiser x̂_0 = a·x + b·F (convert.denoiser_coefficients; bounded by 1, where raw x̂_0's SNR
    reaches 10⁶ near t = 0)."""
    m, s = _f32(mean_coef, std)
    if prediction == "epsilon":
        return torch.ones_like(s)
    if prediction == "x0":
        return (m / s) ** 2
    if prediction == "v":
        return m ** 2 / (m ** 2 + s ** 2) ** 2
    if prediction == "denoiser":
        return sigma_data ** 2 / ((s / m) ** 2 + sigma_data ** 2)
    raise ValueError(f"prediction must be 'epsilon', 'x0', 'v' or 'denoiser', got {prediction!r}")


def regression_target(prediction: str, z: torch.Tensor, xt: torch.Tensor, mean_coef: torch.Tensor, std: torch.Tensor,
                      sigma_data: float = 1.0) -> torch.Tensor:
    """F*: what a network predicting `prediction` should output at x_t when the noise was z: the
    true z converted (prediction_from_eps), and for the denoiser F* = (x_0 − a·x_t)/b."""
    if prediction != "denoiser":
        return prediction_from_eps(prediction, z, xt, mean_coef, std)
    a, b = denoiser_coefficients(mean_coef, std, sigma_data)
    x0 = prediction_from_eps("x0", z, xt, mean_coef, std)
    return (x0 - bcast(a, xt) * xt) / bcast(b, xt)


def weighted_error(prediction: str, out: torch.Tensor, xt: torch.Tensor, z: torch.Tensor, mean_coef: torch.Tensor,
                   std: torch.Tensor, eps_w: torch.Tensor, sigma_data: float = 1.0) -> torch.Tensor:
    """Per sample, λ_ε·k·‖F − F*‖²/D: the network output F against its own regression target
    F* = regression_target(prediction, z, x_t), shape (B,).  Equal to λ_ε·‖ε̂ − z‖²/D for ε̂
    converted from F (tests/test_losses.py)."""
    out, xt, z, m, s = _f32(out, xt, z, mean_coef, std)
    target = regression_target(prediction, z, xt, m, s, sigma_data)
    per = (out - target).pow(2).flatten(1).mean(1)
    return per * (eps_w * target_factor(prediction, m, s, sigma_data))


def _loss(model, x0, t, m, s, z, weighting, snr_gamma, labels):
    xt = bcast(m, x0) * x0 + bcast(s, x0) * z
    w = eps_weight(weighting, model.sde, t, m, s, snr_gamma, model.sigma_data)
    return weighted_error(model.prediction, model.output(xt, t, labels), xt, z, m, s, w, model.sigma_data).mean()


def dsm_loss(model, x0: torch.Tensor, generator: torch.Generator | None = None, t_eps: float = 1e-5,
             weighting: str = "epsilon", snr_gamma: float = 5.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch and the dimensions of λ_ε(t)·‖ε̂_θ(x_t, t) − z‖² (eps_weight), computed in
    the space of the model's prediction; `labels` (B,) condition a conditional network."""
    sde = model.sde
    B = x0.shape[0]
    t = t_eps + (sde.T - t_eps) * torch.rand(B, generator=generator, device=x0.device, dtype=x0.dtype)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return _loss(model, x0, t, torch.exp(sde.log_mean_coef(t)), sde.std(t), z, weighting, snr_gamma, labels)


def _abar_table(sde, device, dtype) -> torch.Tensor:
    """DDPM's ᾱ table on the training device, made once per (device, dtype): a host-to-device copy
    every step would block the host on CUDA and break CUDA-graph capture of the step."""
    cache = sde.__dict__.setdefault("_abar_on_device", {})
    key = (str(device), dtype)
    if key not in cache:
        cache[key] = sde.alphas_cumprod.to(device, dtype)
    return cache[key]


def ddpm_loss(model, x0: torch.Tensor, generator: torch.Generator | None = None, weighting: str = "epsilon",
              snr_gamma: float = 5.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM's loss with integer timesteps and the discrete ᾱ table (VP only): m = √ᾱ_i, σ = √(1 − ᾱ_i),
    t = i/N; with the default weighting it is L_simple."""
    sde = model.sde
    B, N = x0.shape[0], sde.N
    i = torch.randint(1, N + 1, (B,), generator=generator, device=x0.device)
    abar = _abar_table(sde, x0.device, x0.dtype)[i - 1]
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return _loss(model, x0, i.to(x0.dtype) / N, abar.sqrt(), (1 - abar).sqrt(), z, weighting, snr_gamma, labels)

"""Denoising score matching with the ε parameterisation (Ho et al. 2020; Song et al. 2021).

    t ~ U(t_eps, T),  z ~ N(0, I),  x_t = m(t)·x_0 + σ(t)·z,
    L = E ‖ε_θ(x_t, t) − z‖² / D                     ("simple" loss)
    L = E g(t)²/σ(t)² ‖ε_θ(x_t, t) − z‖² / D         (likelihood weighting: g²‖s_θ − ∇log p_{t|0}‖²)

The discrete DDPM loss draws an integer i ~ U{1 … N}, uses the table ᾱ_i and evaluates the
network at t = i/N.
"""
from __future__ import annotations

import torch

from scoresde._checks import bcast


def dsm_loss(model, x0: torch.Tensor, generator: torch.Generator | None = None, t_eps: float = 1e-5,
             likelihood_weighting: bool = False) -> torch.Tensor:
    """Mean over the batch and the dimensions of the (weighted) ε regression error."""
    sde = model.sde
    B = x0.shape[0]
    t = t_eps + (sde.T - t_eps) * torch.rand(B, generator=generator, device=x0.device, dtype=x0.dtype)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    m, s = torch.exp(sde.log_mean_coef(t)), sde.std(t)
    xt = bcast(m, x0) * x0 + bcast(s, x0) * z
    per = (model.eps(xt, t).float() - z).pow(2).flatten(1).mean(1)
    if likelihood_weighting:
        per = per * (sde.g2(t) / s ** 2)
    return per.mean()


def _abar_table(sde, device, dtype) -> torch.Tensor:
    """DDPM's ᾱ table on the training device, made once per (device, dtype): a host-to-device copy
    every step would block the host on CUDA and break CUDA-graph capture of the step."""
    cache = sde.__dict__.setdefault("_abar_on_device", {})
    key = (str(device), dtype)
    if key not in cache:
        cache[key] = sde.alphas_cumprod.to(device, dtype)
    return cache[key]


def ddpm_loss(model, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's L_simple with integer timesteps and the discrete ᾱ table (VP only)."""
    sde = model.sde
    B, N = x0.shape[0], sde.N
    i = torch.randint(1, N + 1, (B,), generator=generator, device=x0.device)
    abar = _abar_table(sde, x0.device, x0.dtype)[i - 1]
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = bcast(abar.sqrt(), x0) * x0 + bcast((1 - abar).sqrt(), x0) * z
    return (model.eps(xt, i.to(x0.dtype) / N).float() - z).pow(2).flatten(1).mean(1).mean()

"""The one place where ε, the score and the clean estimate x̂_0 are converted into each other.

With x_t = m·x_0 + σ·ε:
    s   = −ε / σ                       (score of the Gaussian perturbation kernel)
    x̂_0 = (x − σ·ε) / m = (x + σ²·s) / m   (Tweedie's formula)

`m` and `σ` are tensors of shape (B,), 0-d tensors or Python numbers; they broadcast over
x's trailing dims.
"""
from __future__ import annotations

import torch

from scoresde._checks import bcast


def _as(c, x):
    # A Python number broadcasts as it is: no tensor, so no allocation or host-to-device copy
    # in a sampler's inner loop.
    if not torch.is_tensor(c):
        return c
    return bcast(c.to(dtype=x.dtype, device=x.device), x)


def eps_to_score(eps: torch.Tensor, std) -> torch.Tensor:
    """s = −ε/σ."""
    return -eps / _as(std, eps)


def score_to_eps(score: torch.Tensor, std) -> torch.Tensor:
    """ε = −σ·s."""
    return -_as(std, score) * score


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, mean_coef, std) -> torch.Tensor:
    """x̂_0 = (x − σ·ε)/m."""
    return (x - _as(std, x) * eps) / _as(mean_coef, x)


def x0_from_score(x: torch.Tensor, score: torch.Tensor, mean_coef, std) -> torch.Tensor:
    """Tweedie: x̂_0 = (x + σ²·s)/m."""
    return (x + _as(std, x) ** 2 * score) / _as(mean_coef, x)


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, mean_coef, std) -> torch.Tensor:
    """ε = (x − m·x̂_0)/σ."""
    return (x - _as(mean_coef, x) * x0) / _as(std, x)

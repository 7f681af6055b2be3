"""The one place where ε, the score, the clean estimate x̂_0 and the velocity v are converted
into each other.

With x_t = m·x_0 + σ·ε:
    s   = −ε / σ                       (score of the Gaussian perturbation kernel)
    x̂_0 = (x − σ·ε) / m = (x + σ²·s) / m   (Tweedie's formula)
    v   = m·ε − σ·x_0                  (Salimans & Ho 2022; diffusers' v_prediction)
    ε   = (m·v + σ·x)/(m² + σ²),  x̂_0 = (m·x − σ·v)/(m² + σ²)
          (m² + σ² = 1 on VP, where these are the familiar ε = m·v + σ·x, x̂_0 = m·x − σ·v)

A network's output is named by its `prediction`: 'epsilon', 'x0' (diffusers' 'sample'), 'v'
or 'score'; eps_from_prediction and prediction_from_eps are the only maps between them.

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


def v_from_eps(x: torch.Tensor, eps: torch.Tensor, mean_coef, std) -> torch.Tensor:
    """v = m·ε − σ·x̂_0 with x̂_0 = (x − σ·ε)/m, i.e. v = ((m² + σ²)·ε − σ·x)/m."""
    m, s = _as(mean_coef, x), _as(std, x)
    return m * eps - s * (x - s * eps) / m


def eps_from_v(x: torch.Tensor, v: torch.Tensor, mean_coef, std) -> torch.Tensor:
    """ε = (m·v + σ·x)/(m² + σ²)."""
    m, s = _as(mean_coef, x), _as(std, x)
    return (m * v + s * x) / (m * m + s * s)


def x0_from_v(x: torch.Tensor, v: torch.Tensor, mean_coef, std) -> torch.Tensor:
    """x̂_0 = (m·x − σ·v)/(m² + σ²)."""
    m, s = _as(mean_coef, x), _as(std, x)
    return (m * x - s * v) / (m * m + s * s)


PREDICTIONS = ("epsilon", "x0", "v", "score")


def _unknown(prediction) -> ValueError:
    return ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}, got {prediction!r}")


def check_prediction(prediction: str) -> str:
    """`prediction` if it is one of PREDICTIONS, else a ValueError naming the choices."""
    if prediction not in PREDICTIONS:
        raise _unknown(prediction)
    return prediction


# prediction: (ε from the output, the output from ε), each f(x, value, m, σ)
_MAPS = {
    "epsilon": (lambda x, out, m, s: out, lambda x, eps, m, s: eps),
    "x0": (lambda x, out, m, s: eps_from_x0(x, out, m, s), lambda x, eps, m, s: x0_from_eps(x, eps, m, s)),
    "v": (lambda x, out, m, s: eps_from_v(x, out, m, s), lambda x, eps, m, s: v_from_eps(x, eps, m, s)),
    "score": (lambda x, out, m, s: score_to_eps(out, s), lambda x, eps, m, s: eps_to_score(eps, s)),
}


def eps_from_prediction(prediction: str, out: torch.Tensor, x: torch.Tensor, mean_coef, std) -> torch.Tensor:
    """ε from a network output `out` that predicts `prediction` at x_t = x:
    ε itself; (x − m·x̂_0)/σ; (m·v + σ·x)/(m² + σ²); or −σ·s."""
    if prediction not in _MAPS:
        raise _unknown(prediction)
    return _MAPS[prediction][0](x, out, mean_coef, std)


def prediction_from_eps(prediction: str, eps: torch.Tensor, x: torch.Tensor, mean_coef, std) -> torch.Tensor:
    """The inverse of eps_from_prediction: what a `prediction` network outputs when its ε is `eps`
    (ε; x̂_0 = (x − σ·ε)/m; v = m·ε − σ·x̂_0; s = −ε/σ).  With eps the true noise, this is the
    regression target of that network."""
    if prediction not in _MAPS:
        raise _unknown(prediction)
    return _MAPS[prediction][1](x, eps, mean_coef, std)


def denoiser_coefficients(mean_coef, std, sigma_data: float = 1.0):
    """(a, b) of EDM's preconditioned denoiser in x_t's own scale: x̂_0 = a·x + b·F for a network
    output F, with σ̃ = σ/m (Karras et al. 2022, Table 1, on x̃ = x/m):

        a = c_skip/m = σ_d²/((σ̃² + σ_d²)·m),   b = c_out = σ̃·σ_d/√(σ̃² + σ_d²).

    As σ̃ → 0, x̂_0 → x/m without the network learning the identity, which a raw x̂_0 network must
    do to precision σ (its error reaches the score amplified by m/σ); the regression target
    F* = (x_0 − a·x)/b has unit variance for data of std σ_d at every σ̃."""
    st = std / mean_coef
    a = sigma_data ** 2 / ((st ** 2 + sigma_data ** 2) * mean_coef)
    b = st * sigma_data / (st ** 2 + sigma_data ** 2) ** 0.5  # tensors and numbers alike
    return a, b

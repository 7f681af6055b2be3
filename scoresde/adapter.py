"""Any network as the score function every solver and the likelihood take.

    s(x, t) = −ε̂/σ(t),  ε̂ = eps_from_prediction(prediction, out, x, m(t), σ(t)),
    out = net(c_in(t)·x, c_noise(t))

`prediction` names what the network outputs (scoresde.convert): 'epsilon', 'x0' (diffusers'
'sample'), 'v' (v = m·ε − σ·x_0), 'score', or 'denoiser' — an EDM/k-diffusion D(x̃; σ̃) on
x̃ = x/m at σ̃ = σ/m, whose output is x̂_0.

`time_input` names what the network's time argument is:

    't'          t itself (score_sde with continuous t)
    'scaled'     time_scale·t (score_sde's DDPM-style 999·t; give time_scale)
    'index'      N·t − 1: the discrete index i of t = (i + 1)/N (diffusers, DDPM); N is the SDE's
                 (a model trained with another N must come with that SDE — the map is never a
                 literal 1000); within 1e-4 of the lattice it is the integer, so diffusers' own
                 timesteps reach the network exactly; between, it is fractional (DPM-Solver's way)
    'sigma'      σ̃ = σ/m (EDM's σ; for VE it is σ)
    'log_sigma'  ¼·log σ̃ (EDM's c_noise)
    a callable   time_input(t) -> the network's time tensor

`clip`: None, c (clip x̂_0 to [−c, c], diffusers' clip_sample with clip_sample_range) or
(lo, hi).  A clipped x̂_0 is just another score: ε̂ = (x − m·clip(x̂_0))/σ, so every solver gets it.
"""
from __future__ import annotations

from typing import Callable

import torch

from scoresde._checks import bcast
from scoresde.convert import PREDICTIONS, eps_from_prediction, eps_to_score, x0_from_eps
from scoresde.sde import SDE

TIME_INPUTS = ("t", "scaled", "index", "sigma", "log_sigma")
ADAPTER_PREDICTIONS = PREDICTIONS + ("denoiser",)


def _check_time_input(time_input) -> None:
    if not callable(time_input) and time_input not in TIME_INPUTS:
        raise ValueError(f"time_input must be one of {', '.join(map(repr, TIME_INPUTS))} or a callable, "
                         f"got {time_input!r}")


def network_time(sde: SDE, t: torch.Tensor, time_input, time_scale: float | None = None,
                 sigma_tilde: torch.Tensor | None = None) -> torch.Tensor:
    """The network's time argument at SDE time t (see the module docstring for each name);
    sigma_tilde: σ/m at t when the caller has it already."""
    _check_time_input(time_input)
    if callable(time_input):
        return time_input(t)
    if time_input == "t":
        return t
    if time_input == "scaled":
        return time_scale * t
    if time_input == "index":
        i = sde.N * t.double() - 1  # float64: N·t − 1 in float32 misses the integer by ~1e-4
        near = torch.round(i)
        return torch.where((i - near).abs() < 1e-4, near, i).to(t.dtype)
    if sigma_tilde is None:
        sigma_tilde = sde.std(t) / torch.exp(sde.log_mean_coef(t))
    return sigma_tilde if time_input == "sigma" else 0.25 * torch.log(sigma_tilde)


def _network_output(out, channels: int) -> torch.Tensor:
    # diffusers returns an output object with .sample; others a tuple; a learned-variance
    # network (iDDPM) stacks [prediction, variance] on the channel axis: keep the prediction
    if hasattr(out, "sample"):
        out = out.sample
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if out.ndim > 1 and out.shape[1] == 2 * channels:
        out = out[:, :channels]
    return out


class NetworkScore:
    """score_fn(x, t) of a network (see the module docstring).  Attributes: net, sde, prediction,
    time_input, time_scale, input_scale, clip; `describe()` says all that in one line."""

    def __init__(self, net: Callable, sde: SDE, prediction: str = "epsilon", time_input=None,
                 time_scale: float | None = None, input_scale: float | Callable | None = None,
                 clip: float | tuple[float, float] | None = None, call: Callable | None = None):
        if time_input is None:  # a denoiser takes σ̃, as EDM and k-diffusion write it
            time_input = "sigma" if prediction == "denoiser" else "t"
        if prediction not in ADAPTER_PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(map(repr, ADAPTER_PREDICTIONS))}, "
                             f"got {prediction!r}")
        _check_time_input(time_input)
        if time_input == "scaled" and not (isinstance(time_scale, (int, float)) and time_scale > 0):
            raise ValueError(f"time_input='scaled' needs time_scale > 0 (e.g. 999 for score_sde's DDPM "
                             f"models), got {time_scale!r}")
        if clip is not None:
            lo, hi = (-float(clip), float(clip)) if isinstance(clip, (int, float)) else map(float, clip)
            if not lo < hi:
                raise ValueError(f"clip must be c > 0 or (lo, hi) with lo < hi, got {clip!r}")
            clip = (lo, hi)
        self.net, self.sde, self.prediction = net, sde, prediction
        self.time_input, self.time_scale, self.input_scale, self.clip = time_input, time_scale, input_scale, clip
        self.call = call

    def _input(self, x, t, m):
        if callable(self.input_scale):
            return self.input_scale(x, t)
        if self.input_scale is not None:
            return self.input_scale * x
        return x / bcast(m.to(x.dtype), x) if self.prediction == "denoiser" else x

    def _eps_and_std(self, x: torch.Tensor, t):
        # one network call, m and σ computed once for the conversion, the clip and the score
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        m, s = torch.exp(self.sde.log_mean_coef(t)), self.sde.std(t)
        t_in = network_time(self.sde, t, self.time_input, self.time_scale, sigma_tilde=s / m)
        x_in = self._input(x, t, m)
        raw = self.call(self.net, x_in, t_in) if self.call is not None else self.net(x_in, t_in)
        out = _network_output(raw, x.shape[1] if x.ndim > 1 else 1).to(x.dtype)
        if out.shape != x.shape:
            raise ValueError(f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        # a denoiser's output is x̂_0
        eps = eps_from_prediction("x0" if self.prediction == "denoiser" else self.prediction, out, x, m, s)
        if self.clip is not None:
            x0 = x0_from_eps(x, eps, m, s).clamp(*self.clip)
            eps = eps_from_prediction("x0", x0, x, m, s)
        return eps, s

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        """ε̂(x, t) from one network call (x̂_0 clipped first when `clip` is set)."""
        return self._eps_and_std(x, t)[0]

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """s = −ε̂/σ(t)."""
        eps, s = self._eps_and_std(x, t)
        return eps_to_score(eps, s)

    def describe(self) -> str:
        """One line: what the adapter assumes about the network."""
        if callable(self.time_input):
            time = getattr(self.time_input, "__name__", "a callable")
        else:
            time = {"t": "continuous t", "scaled": f"{self.time_scale}·t", "index": f"index N·t − 1 (N = {self.sde.N})",
                    "sigma": "σ/m", "log_sigma": "¼·log(σ/m)"}[self.time_input]
        clip = f", x̂_0 clipped to [{self.clip[0]:g}, {self.clip[1]:g}]" if self.clip else ""
        return f"predicts {self.prediction}, time input {time}{clip}, {self.sde!r}"


def score_from_network(net: Callable, sde: SDE, prediction: str = "epsilon", time_input=None, **kw) -> NetworkScore:
    """The score function s(x, t) = −ε̂/σ(t) of `net` (see NetworkScore and the module docstring)."""
    return NetworkScore(net, sde, prediction, time_input, **kw)


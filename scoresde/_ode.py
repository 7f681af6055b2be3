"""torchdiffeq settings shared by the probability-flow sampler and the likelihood solve."""
from __future__ import annotations

import torch

ADAPTIVE = ("dopri5", "dopri8", "tsit5", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = ("euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams")


def inside_interval(ends: torch.Tensor) -> dict:
    """Options that keep an adaptive solve's evaluations inside [ends[0], ends[1]].

    By default torchdiffeq probes a first step that can leave the interval (t = −2.3 was seen
    on a T → 1e-3 solve) and steps past the last time before interpolating back; a network
    evaluated at t < 0 sees σ = 0.  An explicit first step and step_t at the ends prevent both."""
    return {"step_t": ends, "first_step": 0.01 * float((ends[1] - ends[0]).abs())}

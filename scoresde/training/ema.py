"""The exponential moving average of a network's parameters, which sampling uses by default."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Shadow copies of `net`'s parameters (in their memory layout), moved towards them after
    each optimizer step with decay min(decay, (1 + step)/(10 + step)): the warm-up keeps the
    first steps' random weights from lingering."""

    def __init__(self, net: nn.Module, decay: float):
        self.net, self.decay = net, decay
        self.shadow = [p.detach().clone() for p in net.parameters()]

    def __iter__(self):
        return iter(self.shadow)

    def update(self, step: int) -> None:
        """Move the shadows towards the parameters after optimizer step `step` (0-based)."""
        # Python-float weight: one multi-tensor kernel and no host sync (a tensor would need none either)
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.net.parameters()], 1 - decay)

    def state_dict(self) -> dict:
        """The network's state dict on the CPU with the shadows in place of its parameters."""
        sd = dict(self.net.state_dict())
        sd.update(zip((n for n, _ in self.net.named_parameters()), self.shadow))
        return {k: v.detach().cpu() for k, v in sd.items()}

    def load_state_dict(self, sd: dict) -> None:
        """Copy the shadows from a state dict written by state_dict() (buffers are the network's)."""
        for e, (n, _) in zip(self.shadow, self.net.named_parameters()):
            e.copy_(sd[n])

    def copy_of(self, model: nn.Module) -> nn.Module:
        """A deep copy of `model` (which holds self.net) in eval mode, carrying the EMA weights."""
        m = copy.deepcopy(model).eval()
        for p, e in zip(m.net.parameters(), self.shadow):
            p.data.copy_(e)
        return m

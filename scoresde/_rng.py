"""Random draws that give the same numbers for a seed on every device.

A draw is made where its generator lives and then moved: a seeded CPU generator gives the same
x_T, noise and probes whether the solve runs on the CPU or a GPU (the tests compare the two),
and a CUDA generator draws on the GPU with no host-to-device copy.
"""
from __future__ import annotations

import torch


class PerSample:
    """One generator per sample, seeded by that sample's seed: a draw of shape (B, ...) takes row
    b from generator b, so a sample's x_T and noise depend on its seed alone, not on the batch it
    is drawn in or the rank that draws it (EDM's stacked generators).  Pass it wherever a
    torch.Generator goes in sampling; `.device` is where the draws are made."""

    def __init__(self, seeds, device="cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)


def _draw(fn, shape, generator, dtype, device):
    if isinstance(generator, PerSample):
        if not shape or shape[0] != len(generator):
            raise ValueError(f"a per-sample generator of {len(generator)} seeds cannot draw shape {tuple(shape)}")
        x = torch.stack([fn(tuple(shape[1:]), generator=g, dtype=dtype, device=generator.device)
                         for g in generator.generators])
        return x if device is None else x.to(device)
    where = generator.device if generator is not None else device
    x = fn(tuple(shape), generator=generator, dtype=dtype, device=where)
    return x if device is None else x.to(device)


def randn(shape, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
          device=None) -> torch.Tensor:
    """z ~ N(0, I) of `shape`, drawn on the generator's device, returned on `device`."""
    return _draw(torch.randn, shape, generator, dtype, device)


def rand(shape, generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
         device=None) -> torch.Tensor:
    """u ~ U[0, 1) of `shape`, drawn on the generator's device, returned on `device`."""
    return _draw(torch.rand, shape, generator, dtype, device)

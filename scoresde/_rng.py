"""Random draws that give the same numbers for a seed on every device.

A draw is made where its generator lives and then moved: a seeded CPU generator gives the same
x_T, noise and probes whether the solve runs on the CPU or a GPU (the tests compare the two),
and a CUDA generator draws on the GPU with no host-to-device copy.
"""
from __future__ import annotations

import torch


def _draw(fn, shape, generator, dtype, device):
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

"""ResolvedModel: a score function with what a sampler or likelihood needs beside it.

It lives in the core so that both the checkpoint loader (learning) and models.resolve_model
(application) can return one without importing each other."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from scoresde.oracle import GaussianMixture
from scoresde.sde import SDE


@dataclass
class ResolvedModel:
    name: str
    score_fn: Callable
    sde: SDE
    shape: tuple  # one sample's shape, e.g. (2,) or (1, 8, 8)
    oracle: GaussianMixture | None = None
    data: torch.Tensor | None = None  # reference data when there is no oracle
    info: dict | None = None

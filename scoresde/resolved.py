"""ResolvedModel: a score function with what a sampler or likelihood needs beside it.

It lives in the core so that both the checkpoint loader (training) and resolve_model
(evaluation) can return one without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from scoresde.oracle import GaussianMixture
from scoresde.sde import SDE


@dataclass
class ResolvedModel:
    """name, score_fn(x, t), its SDE, one sample's shape, and the ground truth to score samples
    against: the oracle mixture when there is one, else `data`, a reference sample.

    A checkpoint also gives its training step, data set name and [data] config.  Its reference
    sample is either stored in it or built from the training data on the first read of `data`
    or `reference_name` (`load_reference` returns (tensor, name)), so loading never needs
    the data.

    A conditional model also has cond_score_fn(x, t, y) and its class_names; score_fn is then its
    unconditional score (the "no label" class)."""
    name: str
    score_fn: Callable
    sde: SDE
    shape: tuple  # one sample's shape, e.g. (2,) or (1, 8, 8)
    oracle: GaussianMixture | None = None
    data: torch.Tensor | None = None  # reference data when there is no oracle (see load_reference)
    step: int | None = None
    data_name: str | None = None
    data_config: Any = None
    reference_name: str | None = None
    describe: str | None = None  # one line on what was inferred (a pretrained model's conventions)
    load_reference: Callable[[], tuple[torch.Tensor, str]] | None = field(default=None, repr=False)
    # a conditional model: cond_score_fn(x, t, y) for labels y (B,), y = len(class_names) "no label"
    # (see scoresde.guidance); None for an unconditional one
    cond_score_fn: Callable | None = field(default=None, repr=False)
    class_names: tuple | None = None
    label: int | None = None  # the class score_fn samples when it is a guided one (scoresde.guidance.guide)

    @property
    def truth(self) -> GaussianMixture | None:
        """The exact distribution the samples should follow: the oracle, or for a guided model of
        one class that class's mixture p_0(x | c); None without an oracle."""
        if self.oracle is None or self.label is None:
            return self.oracle
        return self.oracle.conditional(self.label)

    @property
    def dtype(self) -> torch.dtype:
        """The precision to solve in: float64 for an exact oracle score, float32 for a network."""
        return torch.float64 if getattr(self.score_fn, "oracle", None) is not None else torch.float32

    def __getattribute__(self, key):
        # the first read of data or reference_name builds a lazy reference, once
        if key in ("data", "reference_name"):
            load = object.__getattribute__(self, "load_reference")
            if load is not None:
                data, name = load()  # a failure leaves it lazy, so every read says why
                self.load_reference, self.data, self.reference_name = None, data, name
        return object.__getattribute__(self, key)

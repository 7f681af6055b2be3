"""Classifier-free guidance as a score function, so every solver and the likelihood use it unchanged.

A conditional score function is cond_score(x, t, y) -> ∇log p_t(x | y), with y (B,) class indices
0 … C−1 and the index C ("no label") for the unconditional score ∇log p_t(x) of the same model
(a network trained with label dropout, or an exact mixture).  The guided score is

    s̃(x, t) = (1 + w)·s(x, t, c) − w·s(x, t, ∅)          (Ho & Salimans 2022)

Convention: w = 0 is the plain conditional model, w > 0 guides, w = −1 is the unconditional one.
Since s = −ε/σ is linear in ε, the same line reads ε̃ = (1 + w)·ε_c − w·ε_∅, which is the other
common convention ε_∅ + s·(ε_c − ε_∅) (diffusers' guidance_scale, DPM-Solver) with s = 1 + w:
diffusers' guidance_scale = 7.5 is w = 6.5 here.

For w ≠ 0 the conditional and unconditional halves come from ONE call on the batch stacked as
[x; x] with labels [c; ∅], so a solver counts it as one evaluation (nfe) and it costs one
network call on twice the batch; w = 0 calls the model once on the batch alone.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


def class_index(label, class_names: Sequence[str]) -> int:
    """The index of class `label` (a name, or an index 0 … C−1 given as int or digit string) among
    class_names; a ValueError naming the value and the classes otherwise."""
    names = list(class_names)
    if isinstance(label, str) and label in names:
        return names.index(label)
    try:
        k = int(label)
    except (TypeError, ValueError):
        k = None
    if k is None or isinstance(label, bool) or (isinstance(label, float) and not label.is_integer()):
        raise ValueError(f"class {label!r} is not one of the model's classes ({_listing(names)})")
    if not 0 <= k < len(names):
        raise ValueError(f"class index {k} is out of range: the model has {len(names)} classes, "
                         f"indices 0…{len(names) - 1} ({_listing(names)})")
    return k


def _listing(names: list) -> str:
    shown = ", ".join(map(str, names[:12]))
    return shown + (f", … ({len(names)} in all)" if len(names) > 12 else "")


def check_labels(labels: torch.Tensor, num_classes: int, allow_null: bool = True) -> torch.Tensor:
    """labels as a long tensor whose entries are 0 … C−1 (or C, "no label", when allow_null);
    a ValueError naming the first bad entry and the range otherwise."""
    labels = torch.as_tensor(labels, device=labels.device if torch.is_tensor(labels) else "cpu")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"class labels must be integers, got dtype {labels.dtype}")
    labels = labels.long()
    top = num_classes if allow_null else num_classes - 1
    bad = (labels < 0) | (labels > top)
    if bool(bad.any()):
        v = int(labels[bad.nonzero()[0]].item())
        raise ValueError(f"class label {v} is out of range: labels must lie in 0…{top}"
                         + (f" ({num_classes} is 'no label')" if allow_null else ""))
    return labels


def guided_score_fn(cond_score: Callable, label, w: float, num_classes: int) -> Callable:
    """score_fn(x, t) = (1 + w)·s(x, t, c) − w·s(x, t, ∅) for cond_score(x, t, y) (see the module).

    label: one class index for the whole batch, or a (B,) tensor of indices (then every call must
    carry those B samples: a solver's batch_size chunking needs one class); None is ∅, the model's
    unconditional score.  w: any finite number (0: conditional; −1: unconditional)."""
    w = float(w)
    if not math.isfinite(w):
        raise ValueError(f"guidance w must be a finite number, got {w!r}")
    null = num_classes
    fixed = None
    if label is None:
        fixed, w = null, 0.0  # guidance towards "no label" is the unconditional score itself
    elif torch.is_tensor(label) and label.ndim > 0:
        fixed = check_labels(label.reshape(-1), num_classes, allow_null=False)
    else:
        fixed = int(check_labels(torch.tensor([int(label)], device="cpu"), num_classes, allow_null=False)[0])

    def labels_for(x: torch.Tensor) -> torch.Tensor:
        if isinstance(fixed, int):
            return torch.full((x.shape[0],), fixed, dtype=torch.long, device=x.device)
        if fixed.shape[0] != x.shape[0]:
            raise ValueError(f"{fixed.shape[0]} class labels for a batch of {x.shape[0]} samples; give one "
                             f"class, or evaluate the whole batch at once (no batch_size)")
        return fixed.to(x.device)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = labels_for(x)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        if w == 0.0:
            return cond_score(x, t, y)
        both = cond_score(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)]))
        s_c, s_u = both.chunk(2)
        return s_c + w * (s_c - s_u)  # = (1 + w)·s_c − w·s_u, one rounding fewer

    score_fn.guidance = w
    score_fn.label = fixed
    # an exact conditional oracle stays recognisable as one (its likelihoods run in float64)
    score_fn.oracle = getattr(cond_score, "oracle", None)
    return score_fn


def guide(model, label, w: float):
    """A copy of ResolvedModel `model` (a conditional one) whose score_fn is the guided score of
    class `label` (a name or an index) at guidance w, with .label the class index, so samples and
    metrics refer to that class.  A ValueError names an unconditional model or an unknown class."""
    import copy

    if model.cond_score_fn is None:
        raise ValueError(f"model {model.name} is unconditional (it has no classes); guidance and --class need a "
                         f"conditional model: oracle:gmm8c4, oracle:gmm8c8, or a checkpoint trained with "
                         f"model.conditional = true")
    k = class_index(label, model.class_names)
    out = copy.copy(model)  # not dataclasses.replace: that would read (and so load) a lazy reference
    out.score_fn = guided_score_fn(model.cond_score_fn, k, w, len(model.class_names))
    out.label = k
    return out

"""Resolve a model spec ('oracle:NAME', a checkpoint path, 'diffusers:PATH' or
'py:package.module:function') into a score function.

A resolved model carries what a sampler or likelihood needs: score_fn(x, t), the SDE it
belongs to, the per-sample shape, and the ground truth to score samples against (an oracle
mixture, or a tensor of real data), if any.
"""
from __future__ import annotations

from scoresde.resolved import ResolvedModel
from scoresde.oracle import make_oracle
from scoresde.sde import SDE

__all__ = ["ResolvedModel", "resolve_model"]


def resolve_model(spec: str, sde: SDE | None = None, device=None) -> ResolvedModel:
    """'oracle:gmm8' (labelled: 'oracle:gmm8c4', 'oracle:gmm8c8', 'oracle:gmm8c4-overlap'),
    'oracle:gaussian', 'oracle:gaussianD', a checkpoint file path, 'diffusers:PATH' or
    'py:package.module:function' (see scoresde.evaluation.pretrained).

    For an oracle the SDE is the one given (default VP); a checkpoint or pretrained model
    carries its own SDE, and passing a different one is an error."""
    from scoresde.sde import VPSDE

    if spec.startswith("oracle:"):
        oracle = make_oracle(spec.split(":", 1)[1])
        sde = sde or VPSDE()
        labelled = dict(cond_score_fn=oracle.cond_score_fn(sde), class_names=tuple(oracle.class_names)) \
            if oracle.classes is not None else {}
        return ResolvedModel(spec, oracle.score_fn(sde), sde, (oracle.D,), oracle=oracle, **labelled)
    if spec.startswith(("diffusers:", "py:")):
        from scoresde.evaluation.pretrained import load_diffusers, load_python

        model = (load_diffusers if spec.startswith("diffusers:") else load_python)(spec, device=device)
        if sde is not None and sde.config() != model.sde.config():
            raise ValueError(f"{spec} brings its own SDE ({model.sde!r}); drop --sde")
        return model
    from scoresde.training.checkpoint import load_score_model  # training stack only when a checkpoint is asked for

    return load_score_model(spec, sde=sde, device=device)

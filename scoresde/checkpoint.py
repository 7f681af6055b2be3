"""Checkpoints: written atomically, loaded with weights_only=True, validated before use.

A checkpoint is a dict: format, version, config (plain dict), step, model, ema, optimizer,
rng (one generator state per DDP rank), torch_rng.
"""
from __future__ import annotations

import os
import pickle
import zipfile

import torch

from ._io import atomic_path
from ._resolved import ResolvedModel
from .build import build_model
from .config import from_dict

FORMAT, VERSION = "scoresde-checkpoint", 1
REQUIRED = ("config", "step", "model", "ema", "optimizer", "rng")


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: str, state: dict) -> None:
    """torch.save to a temp file beside `path`, then rename: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(dict(state, format=FORMAT, version=VERSION), tmp)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated and cannot be read "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a scoresde checkpoint (no '{FORMAT}' marker); it may come "
                              f"from another toolkit")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {ckpt.get('version')!r}; this scoresde "
                              f"reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} lacks {', '.join(missing)}")
    return ckpt


def load_score_model(path: str, sde=None, device=None, use_ema: bool = True):
    """A trained checkpoint as a ResolvedModel (EMA weights by default) for sampling/likelihood."""
    ckpt = load_checkpoint(path)
    cfg = from_dict(ckpt["config"])
    model, data = build_model(cfg)
    if sde is not None and sde.config() != model.sde.config():
        raise CheckpointError(f"checkpoint {path!r} was trained with {model.sde!r}, not {sde!r}; drop --sde")
    model.net.load_state_dict(ckpt["ema" if use_ema else "model"])
    model.to(device or "cpu").eval()
    ref, ref_name = None, None
    if data.oracle is None:  # for sample-quality metrics
        from .data import evaluation_reference

        ref, ref_name = evaluation_reference(cfg.data, data)
    return ResolvedModel(path, model, model.sde, data.shape, oracle=data.oracle, data=ref,
                         info=dict(step=ckpt["step"], data=cfg.data.name, data_config=cfg.data, reference=ref_name))

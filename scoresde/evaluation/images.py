"""Large sample sets for outside metrics (pytorch-fid, clean-fid): one PNG per sample, named by its
seed, as EDM's generate.py writes them.

Each sample is drawn from its own seed (scoresde._rng.PerSample), so an image depends on its
seed alone: not on the batch size, nor on how many ranks share the seeds (rank r of K takes
seeds[r::K]), and a resumed run that skips the PNGs already written produces the rest
unchanged.  Every PNG is written under a temporary name and renamed, so a killed run never
leaves a half-written image that a resume would count as done.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from scoresde._io import atomic_path, remove_temps
from scoresde._rng import PerSample
from scoresde.resolved import ResolvedModel


def png_name(seed: int) -> str:
    """The file one seed's image is written to: 000042.png."""
    return f"{seed:06d}.png"


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images on [−1, 1] (B, C, H, W) as uint8 (B, H, W, C): round((x + 1)·127.5), clipped to 0…255."""
    return ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_png(img: np.ndarray, path: str) -> None:
    """One (H, W, C) uint8 image as a PNG (C = 1: grayscale, C = 3: RGB), atomically."""
    from PIL import Image

    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    with atomic_path(path, clean=False) as tmp:  # write_image_folder cleans the folder once
        pil.save(tmp, format="PNG")


@dataclass
class ImageRun:
    """What write_image_folder did: seeds this rank owned, PNGs written, PNGs already there, nfe per sample."""
    owned: int
    written: int
    skipped: int
    nfe: int


def write_image_folder(model: ResolvedModel, folder: str, seeds, solver: str, *, batch: int = 64, rank: int = 0,
                       world: int = 1, device=None, callback=None, **sample_kw) -> ImageRun:
    """Sample one PNG per seed into `folder` with `solver` (solvers.sample's options in
    sample_kw): this rank's share seeds[rank::world], in batches of `batch`, skipping seeds whose
    PNG exists.  callback(k) after each batch of k images."""
    import solvers

    if len(model.shape) != 3 or model.shape[0] not in (1, 3):
        raise ValueError(f"image folders need (C, H, W) samples with C = 1 or 3; this model's are {model.shape}")
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    os.makedirs(folder, exist_ok=True)
    remove_temps(folder)  # half-written PNGs of a killed run (never counted: they have temp names)
    mine = [int(s) for s in list(seeds)[rank::world]]
    todo = [s for s in mine if not os.path.exists(os.path.join(folder, png_name(s)))]
    nfe = 0
    for a in range(0, len(todo), batch):
        chunk = todo[a:a + batch]
        res = solvers.sample(model.score_fn, model.sde, shape=(len(chunk), *model.shape), solver=solver,
                             generator=PerSample(chunk), device=device, **sample_kw)
        nfe = res.nfe
        for s, img in zip(chunk, to_uint8(res.x)):
            save_png(img, os.path.join(folder, png_name(s)))
        if callback is not None:
            callback(len(chunk))
    return ImageRun(owned=len(mine), written=len(todo), skipped=len(mine) - len(todo), nfe=nfe)

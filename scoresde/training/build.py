"""Config → ScoreModel: the one place a network is built, used by the trainer and the
checkpoint loader alike (so loading a checkpoint never reaches into the trainer)."""
from __future__ import annotations

import math

import torch

from scoresde.training.config import Config
from scoresde.training.data import Dataset, data_from_config
from scoresde.training.nn import MLP, ScoreModel, UNet
from scoresde.sde import make_sde


def build_score_model(cfg: Config, shape: tuple, own_global_rng: bool = False) -> ScoreModel:
    """The ScoreModel (ε-network + SDE) a config describes for samples of `shape`; the weights
    are drawn from torch's CPU generator seeded with train.seed, so a config fixes them.

    The caller's global RNG state is restored afterwards, unless own_global_rng=True (the
    trainer, which owns that state from here on and keeps it in its checkpoints)."""
    if own_global_rng:
        torch.manual_seed(cfg.train.seed)  # CUDA's generators too: dropout on CUDA draws from them
        return _build(cfg, tuple(shape))
    with torch.random.fork_rng(devices=[]):  # layers initialise on the CPU: its state is all they touch
        torch.default_generator.manual_seed(cfg.train.seed)
        return _build(cfg, tuple(shape))


def _build(cfg: Config, shape: tuple) -> ScoreModel:
    sde = make_sde(cfg.sde.name, **cfg.sde_kwargs())
    m = cfg.model
    if m.arch == "mlp":
        net = MLP(math.prod(shape), m.hidden, m.blocks, m.time_embedding, m.dropout)
    else:
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"model.arch = 'unet' needs square images (C, H, H), the data have shape {shape}")
        if shape[1] % (2 ** (len(m.channel_mult) - 1)):
            raise ValueError(f"image size {shape[1]} is not divisible by 2^{len(m.channel_mult) - 1} "
                             f"(model.channel_mult = {m.channel_mult})")
        net = UNet(shape[0], shape[1], m.channels, tuple(m.channel_mult), m.blocks,
                   tuple(m.attention_resolutions), m.time_embedding, m.dropout)
    return ScoreModel(net, sde, m.sigma_data, m.prediction)


def build_model(cfg: Config) -> tuple[ScoreModel, Dataset]:
    """The ScoreModel and the data set a config describes (weights seeded by train.seed), for
    training: torch's global generator is left seeded by train.seed and advanced by the draws."""
    data = data_from_config(cfg.data)
    return build_score_model(cfg, data.shape, own_global_rng=True), data

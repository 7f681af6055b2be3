"""Config → ScoreModel: the one place a network is built, used by the trainer and the
checkpoint loader alike (so loading a checkpoint never reaches into the trainer)."""
from __future__ import annotations

import math

import torch

from scoresde.training.config import Config, ConfigError
from scoresde.training.data import Dataset, data_from_config
from scoresde.training.nn import MLP, ScoreModel, UNet
from scoresde.sde import make_sde


def build_score_model(cfg: Config, shape: tuple, own_global_rng: bool = False,
                      class_names: list | None = None) -> ScoreModel:
    """The ScoreModel (network + SDE) a config describes for samples of `shape`; the weights
    are drawn from torch's CPU generator seeded with train.seed, so a config fixes them.  A
    conditional config (model.conditional) needs the data's class_names: one embedding each, plus
    "no label"; the model keeps them as .class_names.

    The caller's global RNG state is restored afterwards, unless own_global_rng=True (the
    trainer, which owns that state from here on and keeps it in its checkpoints)."""
    if own_global_rng:
        torch.manual_seed(cfg.train.seed)  # CUDA's generators too: dropout on CUDA draws from them
        return _build(cfg, tuple(shape), class_names)
    with torch.random.fork_rng(devices=[]):  # layers initialise on the CPU: its state is all they touch
        torch.default_generator.manual_seed(cfg.train.seed)
        return _build(cfg, tuple(shape), class_names)


def _build(cfg: Config, shape: tuple, class_names) -> ScoreModel:
    sde = make_sde(cfg.sde.name, **cfg.sde_kwargs())
    m = cfg.model
    if m.conditional and not class_names:
        raise ValueError("model.conditional = true needs the data's class names (none were given)")
    C = len(class_names) if m.conditional else 0
    if m.arch == "mlp":
        net = MLP(math.prod(shape), m.hidden, m.blocks, m.time_embedding, m.dropout, C)
    else:
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"model.arch = 'unet' needs square images (C, H, H), the data have shape {shape}")
        if shape[1] % (2 ** (len(m.channel_mult) - 1)):
            raise ValueError(f"image size {shape[1]} is not divisible by 2^{len(m.channel_mult) - 1} "
                             f"(model.channel_mult = {m.channel_mult})")
        net = UNet(shape[0], shape[1], m.channels, tuple(m.channel_mult), m.blocks,
                   tuple(m.attention_resolutions), m.time_embedding, m.dropout, C)
    model = ScoreModel(net, sde, m.sigma_data, m.prediction)
    model.class_names = tuple(class_names) if C else None
    return model


def build_model(cfg: Config) -> tuple[ScoreModel, Dataset]:
    """The ScoreModel and the data set a config describes (weights seeded by train.seed), for
    training: torch's global generator is left seeded by train.seed and advanced by the draws."""
    data = data_from_config(cfg.data)
    if cfg.model.conditional and not data.class_names:
        raise ConfigError(f"model.conditional = true needs labelled data; data.name = {cfg.data.name!r} "
                          f"({data.name}) has no labels (labelled: ring-c4, ring-c8, digits, cifar10, an images "
                          f"folder of class sub-folders, a .npz with a y array)")
    return build_score_model(cfg, data.shape, own_global_rng=True, class_names=data.class_names), data

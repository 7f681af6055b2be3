"""Models this project did not train, as ResolvedModels: a diffusers UNet with its scheduler
config ('diffusers:PATH'), and any Python function that returns a network and its conventions
('py:package.module:function').

A diffusers scheduler config fixes everything the adapter needs: the β table
(beta_schedule, beta_start, beta_end or trained_betas, and N = num_train_timesteps) becomes a
DiscreteVPSDE, prediction_type maps to the adapter's prediction ('epsilon' → epsilon,
'sample' → x0, 'v_prediction' → v), the UNet's time input is the discrete index
i = N·t − 1, and clip_sample/clip_sample_range clip x̂_0.  The sampling side of the scheduler
(timestep_spacing, steps_offset, variance_type for sampling) is not used: our solvers choose
their own grids, and diffusers' timesteps can be passed as an explicit grid.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any

from scoresde.adapter import NetworkScore
from scoresde.resolved import ResolvedModel
from scoresde.sde import SDE, DiscreteVPSDE

DIFFUSERS_PREDICTIONS = {"epsilon": "epsilon", "sample": "x0", "v_prediction": "v"}


class PretrainedError(ValueError):
    """A pretrained-model spec that cannot be loaded; the message names the spec and the fault."""


def _scheduler_config(path: str) -> dict:
    for cand in (os.path.join(path, "scheduler", "scheduler_config.json"), os.path.join(path, "scheduler_config.json")):
        if os.path.isfile(cand):
            with open(cand) as f:
                return json.load(f)
    raise PretrainedError(f"diffusers:{path}: no scheduler/scheduler_config.json or scheduler_config.json "
                          f"(save the pipeline, or the UNet and its scheduler, with save_pretrained)")


def sde_from_scheduler_config(cfg: dict, where: str = "the scheduler config") -> DiscreteVPSDE:
    """The DiscreteVPSDE of a diffusers scheduler config (its β table and N)."""
    if cfg.get("rescale_betas_zero_snr"):
        raise PretrainedError(f"{where}: rescale_betas_zero_snr makes ᾱ_N = 0 (infinite σ/m at T), which no "
                              f"SDE here can start from")
    N = int(cfg.get("num_train_timesteps", 1000))
    try:
        if cfg.get("trained_betas") is not None:
            return DiscreteVPSDE(betas=cfg["trained_betas"])
        return DiscreteVPSDE(cfg.get("beta_schedule", "linear"), float(cfg.get("beta_start", 1e-4)),
                             float(cfg.get("beta_end", 0.02)), N)
    except ValueError as e:
        raise PretrainedError(f"{where}: {e}") from None


def adapter_settings(cfg: dict, where: str = "the scheduler config") -> dict:
    """{prediction, clip} for NetworkScore from a diffusers scheduler config."""
    kind = cfg.get("prediction_type", "epsilon")
    if kind not in DIFFUSERS_PREDICTIONS:
        raise PretrainedError(f"{where}: prediction_type {kind!r} is not one of "
                              f"{', '.join(map(repr, DIFFUSERS_PREDICTIONS))}")
    if cfg.get("thresholding"):
        raise PretrainedError(f"{where}: dynamic thresholding (thresholding = true) depends on the whole "
                              f"batch and is not a score function; set it to false")
    clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample") else None
    return dict(prediction=DIFFUSERS_PREDICTIONS[kind], clip=clip)


def load_diffusers(spec: str, device=None) -> ResolvedModel:
    """'diffusers:PATH': a folder written by save_pretrained (a pipeline with unet/ and
    scheduler/, or a UNet folder holding scheduler_config.json beside config.json), or a hub id
    that is cached or reachable.  `.describe` says what was inferred, in one line."""
    try:
        import diffusers
    except ImportError:
        raise PretrainedError(f"{spec}: needs the diffusers package: pip install 'scoresde[diffusers]'") from None
    path = spec.split(":", 1)[1]
    local = os.path.isdir(path)
    try:
        if local:
            sub = "unet" if os.path.isdir(os.path.join(path, "unet")) else None
            cfg = _scheduler_config(path)
            unet = diffusers.UNet2DModel.from_pretrained(path, subfolder=sub, low_cpu_mem_usage=False)
        else:
            cfg = dict(diffusers.DDPMScheduler.load_config(path, subfolder="scheduler"))
            unet = diffusers.UNet2DModel.from_pretrained(path, subfolder="unet", low_cpu_mem_usage=False)
    except PretrainedError:
        raise
    except Exception as e:  # a missing file, an offline hub, a foreign folder: one line naming it
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise PretrainedError(f"{spec}: could not load a diffusers UNet2DModel and scheduler "
                              f"({type(e).__name__}: {msg})") from None
    unet = unet.to(device or "cpu").eval().requires_grad_(False)
    sde = sde_from_scheduler_config(cfg, spec)
    settings = adapter_settings(cfg, spec)
    score = NetworkScore(unet, sde, time_input="index", **settings)  # the adapter unwraps UNet2DOutput.sample
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    shape = (int(unet.config.in_channels), int(h), int(w))
    describe = (f"{spec}: UNet2DModel {'×'.join(map(str, shape))}, {cfg.get('_class_name', 'scheduler')} "
                f"{sde.beta_schedule} β, N = {sde.N}; " + score.describe())
    return ResolvedModel(spec, score, sde, shape, describe=describe)


ADAPTER_KEYS = ("prediction", "time_input", "time_scale", "input_scale", "clip", "call")  # NetworkScore's settings
PY_KEYS = {"net", "score_fn", "sde", "shape", "data", "name", *ADAPTER_KEYS}


def load_python(spec: str, device=None) -> ResolvedModel:
    """'py:package.module:function': function(device) returns a ResolvedModel, or a dict with
    `sde` (an SDE), `shape` (one sample's shape) and either `score_fn` (a ready score function)
    or `net` plus the adapter's settings (prediction, time_input, time_scale, input_scale,
    clip, call); optional `data` (a reference sample) and `name`."""
    body = spec.split(":", 1)[1]
    mod_name, _, fn_name = body.rpartition(":")
    if not mod_name or not fn_name:
        raise PretrainedError(f"{spec}: give py:package.module:function")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise PretrainedError(f"{spec}: cannot import {fn_name!r} from {mod_name!r} ({type(e).__name__}: {e})") from None
    got: Any = fn(device)
    if isinstance(got, ResolvedModel):
        return got
    if not isinstance(got, dict):
        raise PretrainedError(f"{spec}: {fn_name}() returned a {type(got).__name__}; return a ResolvedModel or "
                              f"a dict with sde, shape and score_fn or net")
    unknown = sorted(set(got) - PY_KEYS)
    if unknown:
        raise PretrainedError(f"{spec}: {fn_name}() returned unknown key(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(sorted(PY_KEYS))}")
    if not isinstance(got.get("sde"), SDE) or "shape" not in got or ("score_fn" in got) == ("net" in got):
        raise PretrainedError(f"{spec}: {fn_name}() must return sde (an SDE), shape, and exactly one of "
                              f"score_fn or net")
    sde, shape = got["sde"], tuple(int(s) for s in got["shape"])
    if "score_fn" in got:
        score, describe = got["score_fn"], f"{spec}: a score function, {sde!r}"
    else:
        kw = {k: got[k] for k in ADAPTER_KEYS if k in got}
        try:
            score = NetworkScore(got["net"], sde, **kw)
        except ValueError as e:
            raise PretrainedError(f"{spec}: {e}") from None
        describe = f"{spec}: " + score.describe()
    return ResolvedModel(got.get("name", spec), score, sde, shape, data=got.get("data"), describe=describe)

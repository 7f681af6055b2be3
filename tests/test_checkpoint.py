"""Checkpoints stand alone: loading needs no training data, leaves torch's global RNG alone,
keeps the config's weights, and says clearly when a reference sample cannot be had."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import solvers
from scoresde.evaluation.compare import score_samples
from scoresde.evaluation.resolve import resolve_model
from scoresde.training.build import build_score_model
from scoresde.training.checkpoint import CheckpointError, load_checkpoint, load_score_model, save_checkpoint
from scoresde.training.config import from_dict, load_config
from scoresde.training.nn import MLP
from scoresde.training.trainer import Trainer

TINY = {"model": {"hidden": 16, "blocks": 1},
        "train": {"steps": 20, "warmup": 2, "ckpt_every": 0, "log_every": 5, "preview_every": 10 ** 6}}


def _points(path) -> np.ndarray:
    """Two clusters at (±0.5, 0): 200 rows, float32, written to `path`."""
    rng = np.random.default_rng(0)
    x = rng.normal(scale=0.05, size=(200, 2)).astype(np.float32)
    x[:100, 0] += 0.5
    x[100:, 0] -= 0.5
    np.save(path, x)
    return x


def _train_on_file(tmp_path, name="pts.npy"):
    pts = _points(tmp_path / name)
    cfg = from_dict({**TINY, "data": {"name": "file", "path": str(tmp_path / name), "batch_size": 16}})
    out = tmp_path / "run"
    Trainer(cfg, str(out), progress=False, previews=False).train()
    return pts, str(out / "checkpoint.pt")


def test_checkpoint_samples_and_scores_after_its_data_file_is_deleted(tmp_path):
    pts, ck = _train_on_file(tmp_path)
    os.remove(tmp_path / "pts.npy")
    model = resolve_model(ck)
    assert model.step == 20 and model.data_name == "file" and model.oracle is None
    assert "pts.npy" in model.reference_name
    # the stored reference is drawn from the file: every row is one of its rows
    ref = model.data.numpy()
    assert ref.shape == (20000, 2)
    assert np.isin(ref.view(np.complex64).ravel(), pts.view(np.complex64).ravel()).all()
    res = solvers.sample(model.score_fn, model.sde, shape=(500, 2), solver="ddim", steps=5,
                         generator=torch.Generator().manual_seed(0))
    q = score_samples(res.x, model)
    assert math.isfinite(q["sw2"]) and q["sw2"] > 0


def test_loading_leaves_the_global_rng_state_unchanged(tmp_path):
    _, ck = _train_on_file(tmp_path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    load_score_model(ck)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_config_fixes_the_initial_weights():
    """The weights are those torch's CPU generator seeded with train.seed gives the network."""
    cfg = from_dict({**TINY, "train": {**TINY["train"], "seed": 7}})
    got = build_score_model(cfg, (2,)).net.state_dict()
    torch.manual_seed(7)
    m = cfg.model
    want = MLP(2, m.hidden, m.blocks, m.time_embedding, m.dropout).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_a_relative_data_path_resolves_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "run.toml").write_text('[data]\nname = "file"\npath = "pts.npy"\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder
    cfg = load_config(os.path.join("exp", "run.toml"))
    assert cfg.data.path == str(folder / "pts.npy")


def test_a_missing_reference_names_the_data_file(tmp_path):
    """A checkpoint without a stored reference (written before references were kept) still
    loads; reading its reference once the data file is gone names the file and the checkpoint."""
    _, ck = _train_on_file(tmp_path)
    state = load_checkpoint(ck)
    del state["reference"], state["reference_name"]
    for key in ("format", "version"):
        state.pop(key)
    save_checkpoint(ck, state)
    os.remove(tmp_path / "pts.npy")
    model = load_score_model(ck)
    assert model.step == 20
    with pytest.raises(CheckpointError) as e:
        model.data
    msg = str(e.value)
    assert ck in msg and "pts.npy" in msg and "no reference sample" in msg
    with pytest.raises(CheckpointError):  # a failure stays a failure, not a silent None
        model.data


def test_an_old_checkpoint_builds_its_reference_lazily(tmp_path):
    pts, ck = _train_on_file(tmp_path)
    stored = load_score_model(ck).data
    state = load_checkpoint(ck)
    del state["reference"], state["reference_name"]
    save_checkpoint(ck, {k: v for k, v in state.items() if k not in ("format", "version")})
    lazy = load_score_model(ck)
    assert lazy.load_reference is not None  # nothing built at load
    assert torch.equal(lazy.data, stored) and lazy.load_reference is None

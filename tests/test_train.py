"""Training: the loss falls, resume is exact, checkpoints are validated, DDP agrees across ranks."""
import os

import pytest
import torch
from click.testing import CliRunner

from scoresde.training.checkpoint import CheckpointError, load_checkpoint
from scoresde.cli import cli
from scoresde.training.config import ConfigError, from_dict, load_config
from scoresde.training.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(__file__))


def small_cfg(**train):
    cfg = from_dict({"data": {"name": "ring", "batch_size": 128}, "model": {"hidden": 64, "blocks": 2},
                     "train": dict(dict(steps=40, warmup=5, ckpt_every=0, log_every=10), **train)})
    return cfg


def test_loss_falls_on_the_ring(tmp_path):
    cfg = small_cfg(steps=300)
    losses = Trainer(cfg, str(tmp_path), progress=False).train()
    assert len(losses) == 300
    # the ε-regression loss has an irreducible floor (≈ 0.35 here), so "well below" is < 0.6 × start
    start, end = sum(losses[:5]) / 5, sum(losses[-50:]) / 50
    assert end < 0.6 * start, (start, end)
    assert os.path.exists(tmp_path / "checkpoint.pt") and os.path.exists(tmp_path / "log.jsonl")
    assert os.listdir(tmp_path / "previews")


def test_resume_reproduces_the_uninterrupted_loss_sequence(tmp_path):
    cfg = small_cfg(steps=40)
    full = Trainer(cfg, str(tmp_path / "a"), progress=False).train()
    first = Trainer(cfg, str(tmp_path / "b"), progress=False).train(stop_after=17)
    rest = Trainer(cfg, str(tmp_path / "b"), resume=True, progress=False).train()
    assert first + rest == full
    a, b = load_checkpoint(str(tmp_path / "a" / "checkpoint.pt")), load_checkpoint(str(tmp_path / "b" / "checkpoint.pt"))
    assert a["step"] == b["step"] == 40
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k])


def test_existing_run_is_never_overwritten(tmp_path):
    cfg = small_cfg(steps=5)
    Trainer(cfg, str(tmp_path), progress=False).train()
    with pytest.raises(ValueError, match="already exists; pass --resume"):
        Trainer(cfg, str(tmp_path), progress=False)


def test_truncated_foreign_and_mismatched_checkpoints_are_rejected(tmp_path):
    cfg = small_cfg(steps=5)
    Trainer(cfg, str(tmp_path), progress=False).train()
    path = tmp_path / "checkpoint.pt"
    blob = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="is truncated"):
        load_checkpoint(str(tmp_path / "trunc.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a scoresde checkpoint"):
        load_checkpoint(str(tmp_path / "garbage.pt"))
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="plain torch file with no scoresde header"):
        load_checkpoint(str(tmp_path / "foreign.pt"))
    other = small_cfg(steps=5, lr=1e-4)
    with pytest.raises(CheckpointError, match=r"different config \(train.lr\)"):
        Trainer(other, str(tmp_path), resume=True, progress=False)
    # a truncated checkpoint through the CLI: one line, exit 2
    r = CliRunner().invoke(cli, ["sample", "--model", str(tmp_path / "trunc.pt"), "--n", "4"])
    assert r.exit_code == 2 and "is truncated" in r.output and "Traceback" not in r.output


def test_trained_checkpoint_plugs_into_sample_compare_and_likelihood(tmp_path):
    cfg = small_cfg(steps=20)
    Trainer(cfg, str(tmp_path), progress=False).train()
    ck = str(tmp_path / "checkpoint.pt")
    run = CliRunner().invoke
    r = run(cli, ["sample", "--model", ck, "--n", "50", "--steps", "5", "--out", str(tmp_path / "s.npz"), "--quiet"])
    assert r.exit_code == 0, r.output
    r = run(cli, ["compare", "--model", ck, "--solvers", "heun,ddpm", "--steps", "4", "--n", "100", "--quiet",
                  "--no-plots", "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0 and "std_ratio" in r.output, r.output
    r = run(cli, ["likelihood", "--checkpoint", ck, "--n", "4", "--rtol", "1e-3", "--atol", "1e-3"])
    assert r.exit_code == 0 and "bits/dim" in r.output, r.output
    r = run(cli, ["sample", "--model", ck, "--sde", "ve", "--n", "4"])
    assert r.exit_code == 2 and "drop --sde" in r.output


def test_cli_train_and_resume(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[data]\nname = "moons"\nbatch_size = 64\n[sde]\nname = "subvp"\n'
                    '[model]\nhidden = 32\nblocks = 1\n[train]\nsteps = 10\nwarmup = 2\nckpt_every = 5\n')
    out = str(tmp_path / "run")
    r = CliRunner().invoke(cli, ["train", "--config", str(conf), "--out", out, "--quiet"])
    assert r.exit_code == 0 and "trained steps 0 -> 10" in r.output, r.output
    r = CliRunner().invoke(cli, ["train", "--config", str(conf), "--out", out, "--quiet"])
    assert r.exit_code == 2 and "--resume" in r.output
    r = CliRunner().invoke(cli, ["train", "--config", str(conf), "--out", out, "--resume", "--steps", "15", "--quiet"])
    assert r.exit_code == 0 and "trained steps 10 -> 15" in r.output, r.output


def test_digits_unet_trains_a_few_steps(tmp_path):
    cfg = from_dict({"data": {"name": "digits", "batch_size": 16},
                     "model": {"arch": "unet", "channels": 16, "blocks": 1},
                     "train": {"steps": 3, "ckpt_every": 0, "preview_every": 0}})
    tr = Trainer(cfg, str(tmp_path), progress=False)
    losses = tr.train()
    assert len(losses) == 3 and all(l > 0 for l in losses)
    x = tr.data.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and x.min() >= -1 and x.max() < 1
    # the likelihood CLI defaults to the 200 held-out digits and their 17 levels
    r = CliRunner().invoke(cli, ["likelihood", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--n", "3",
                                 "--method", "hutchinson", "--rtol", "1e-2", "--atol", "1e-2"])
    assert r.exit_code == 0 and "17-level data" in r.output and "n=3" in r.output, r.output


def test_digits_test_split_is_held_out():
    from scoresde.training.data import make_dataset
    train, test = make_dataset("digits"), make_dataset("digits-test")
    assert train.table.shape[0] == 1597 and test.table.shape[0] == 200
    flat = {tuple(v.tolist()) for v in train.table.flatten(1)}
    assert sum(tuple(v.tolist()) not in flat for v in test.table.flatten(1)) >= 190


@pytest.mark.parametrize("raw, match", [
    ({"train": {"lr_rate": 1.0}}, "unknown key 'train.lr_rate'; allowed in \\[train\\]: steps"),
    ({"optim": {}}, r"unknown config section \[optim\]"),
    ({"train": {"steps": "many"}}, "train.steps must be int, got str 'many'"),
    ({"train": {"steps": 2.5}}, "train.steps must be int, got float"),
    ({"sde": {"name": "vpp"}}, "sde.name = 'vpp' is not allowed; choose one of: vp, subvp, ve"),
    ({"model": {"channel_mult": [1, "2"]}}, "model.channel_mult must be a list of integers"),
    ({"train": {"lr": -1.0}}, "train.lr must be finite and > 0"),
    ({"train": {"loss": "ddpm"}, "sde": {"name": "ve"}}, "needs sde.name = 'vp'"),
])
def test_config_errors_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(raw)


def test_bundled_configs_load():
    for name in ("ring_vp", "ring_ve", "moons_subvp", "digits_vp"):
        cfg = load_config(os.path.join(ROOT, "configs", f"{name}.toml"))
        assert cfg.train.steps > 0


def _ddp_worker(rank, world, init_file, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = small_cfg(steps=8)
        tr = Trainer(cfg, out, device="cpu", progress=False)
        tr.train()
        torch.save({k: v.clone() for k, v in tr.model.net.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_ranks_agree(tmp_path):
    import torch.multiprocessing as mp
    out = str(tmp_path / "ddp")
    os.makedirs(out)
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True, start_method="spawn")
    r0, r1 = torch.load(os.path.join(out, "rank0.pt")), torch.load(os.path.join(out, "rank1.pt"))
    ck = load_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert len(ck["rng"]) == 2 and ck["step"] == 8
    for k in r0:
        assert torch.equal(r0[k], r1[k]) and torch.equal(r0[k], ck["model"][k])


@pytest.mark.slow
def test_trained_ring_model_samples_the_ring(tmp_path):
    """configs/ring_vp.toml trained on CPU; 1000-step Euler–Maruyama from the EMA weights."""
    import solvers
    from scoresde.evaluation.metrics import mode_metrics
    cfg = load_config(os.path.join(ROOT, "configs", "ring_vp.toml"))
    tr = Trainer(cfg, str(tmp_path), progress=False)
    tr.train()
    model = tr.ema_model()
    res = solvers.sample(model, model.sde, shape=(5000, 2), solver="euler_maruyama", steps=1000,
                         generator=torch.Generator().manual_seed(0))
    q = mode_metrics(res.x, tr.data.oracle)
    assert 1 - q["off_mode"] >= 0.99, q
    assert abs(q["std_ratio"] - 1) <= 0.10, q

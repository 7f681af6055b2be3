"""`scoresde train`: --resume without --config takes the config from the checkpoint."""

from click.testing import CliRunner

from scoresde.cli import cli

CONFIG = ('[data]\nname = "ring"\nbatch_size = 32\n[model]\nhidden = 16\nblocks = 1\n'
          '[train]\nsteps = 4\nwarmup = 1\nckpt_every = 0\nlr = 0.0007\n')


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args] + ["--quiet", "--no-preview", "--threads", "1"])


def test_resume_without_config_uses_the_checkpoints(tmp_path):
    conf, out = tmp_path / "c.toml", tmp_path / "run"
    conf.write_text(CONFIG)
    r = run("train", "--config", conf, "--out", out)
    assert r.exit_code == 0 and "trained steps 0 -> 4" in r.output, r.output
    conf.unlink()  # the file is gone: only the checkpoint knows the config now
    r = run("train", "--out", out, "--resume", "--steps", 6)
    assert r.exit_code == 0 and "trained steps 4 -> 6" in r.output, r.output
    from scoresde.training.checkpoint import load_checkpoint

    ck = load_checkpoint(str(out / "checkpoint.pt"))
    assert ck["config"]["train"]["lr"] == 0.0007 and ck["config"]["model"]["hidden"] == 16 and ck["step"] == 6


def test_without_config_a_new_run_or_a_missing_checkpoint_is_one_clear_line(tmp_path):
    r = run("train", "--out", tmp_path / "new")
    assert r.exit_code == 2 and "--config is required for a new run" in r.output and "Traceback" not in r.output
    r = run("train", "--out", tmp_path / "new", "--resume")
    assert r.exit_code == 2 and "checkpoint.pt', which does not exist; pass --config to start a new run" in r.output
    r = run("train", "--config", tmp_path / "missing.toml", "--out", tmp_path / "new")
    assert r.exit_code == 2 and "missing.toml" in r.output and "does not exist" in r.output

"""--threads auto|N on every command that evaluates a network: it says what it chose and leaves
torch's process-wide thread count as it found it."""
import pytest
import torch
from click.testing import CliRunner

from scoresde.cli import cli

CONFIG = ('[data]\nname = "ring"\nbatch_size = 32\n[model]\nhidden = 16\nblocks = 1\n'
          '[train]\nsteps = 3\nwarmup = 1\nckpt_every = 0\n')


def _args(cmd, tmp_path):
    if cmd == "train":
        conf = tmp_path / "c.toml"
        conf.write_text(CONFIG)
        return ["train", "--config", str(conf), "--out", str(tmp_path / "run"), "--no-preview"]
    return {"sample": ["sample", "--n", "20", "--steps", "3", "--out", str(tmp_path / "s.npz")],
            "likelihood": ["likelihood", "--model", "oracle:gaussian", "--n", "4", "--rtol", "1e-3", "--atol", "1e-3"],
            "schedule": ["schedule", "--nfe", "2", "--n-fit", "8", "--n-eval", "8", "--max-evals", "2",
                         "--out", str(tmp_path / "g.json")],
            "compare": ["compare", "--solvers", "ddim", "--steps", "3", "--n", "20", "--no-plots",
                        "--out", str(tmp_path / "cmp")]}[cmd]



@pytest.mark.parametrize("cmd", ["train", "sample", "likelihood", "schedule"])
def test_explicit_count_is_used_announced_and_restored(cmd, tmp_path, two_threads):
    r = CliRunner().invoke(cli, _args(cmd, tmp_path) + ["--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "threads: 1 (--threads)" in r.output
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("cmd", ["train", "sample", "likelihood", "schedule"])
def test_auto_times_both_counts_and_says_which_won(cmd, tmp_path, two_threads):
    r = CliRunner().invoke(cli, _args(cmd, tmp_path))  # auto is the default
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("threads: "))
    assert line.split()[1] in ("1", "2") and "of 2 evaluates faster" in line and "ms per evaluation" in line
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("cmd", ["train", "sample", "likelihood", "schedule", "compare"])
@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_bad_count_is_refused_naming_it(cmd, bad, tmp_path):
    r = CliRunner().invoke(cli, _args(cmd, tmp_path) + ["--threads", bad])
    assert r.exit_code == 2
    assert f"{bad!r}: give auto or a whole number >= 1" in r.output
    assert "Traceback" not in r.output

"""`sample --images`: one PNG per seed that depends on its seed alone (batch, ranks, resume), and
`py:module:function` models from the command line."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from scoresde.cli import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODULE = textwrap.dedent("""
    import torch
    from scoresde.sde import DiscreteVPSDE

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x, t):
            return torch.tanh(self.conv(x)) * (1 + t.reshape(-1, 1, 1, 1) / 50)

    def build(device):
        return dict(net=Net().to(device), sde=DiscreteVPSDE("linear", N=50), shape=(3, 4, 4), prediction="v",
                    time_input="index")

    def ready(device):
        sde = DiscreteVPSDE("linear", N=50)
        return dict(score_fn=lambda x, t: -x, sde=sde, shape=(3, 4, 4))

    def broken(device):
        return dict(net=Net(), sde=DiscreteVPSDE(N=50), shape=(3, 4, 4), colour="red")
""")


@pytest.fixture
def py_model(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "py:my_models:build"


def images(folder):
    return {n: np.asarray(Image.open(os.path.join(folder, n))) for n in sorted(os.listdir(folder))}


def sample(*args, env=None):
    return CliRunner().invoke(cli, ["sample", *map(str, args), "--threads", "1", "--quiet"], env=env)


def test_images_depend_on_their_seed_alone_batch_ranks_and_resume(tmp_path, py_model):
    common = ["--model", py_model, "--solver", "ddpm", "--steps", "10", "--n", "7", "--seed", "3"]
    r = sample(*common, "--images", tmp_path / "one", "--batch-size", "7")
    assert r.exit_code == 0, r.output
    one = images(tmp_path / "one")
    assert sorted(one) == [f"{s:06d}.png" for s in range(3, 10)]
    assert one["000003.png"].shape == (4, 4, 3) and one["000003.png"].dtype == np.uint8
    # two ranks (as torchrun sets RANK and WORLD_SIZE), each its share, in batches of 2
    for rank in (0, 1):
        r = sample(*common, "--images", tmp_path / "two", "--batch-size", "2", env={"RANK": str(rank), "WORLD_SIZE": "2"})
        assert r.exit_code == 0 and f"rank {rank} of 2: {4 - rank} PNG(s) written" in r.output, r.output
    two = images(tmp_path / "two")
    assert two.keys() == one.keys() and all(np.array_equal(one[k], two[k]) for k in one)
    # a rerun skips what is there and redraws only what is missing, identically
    os.remove(tmp_path / "one" / "000005.png")
    r = sample(*common, "--images", tmp_path / "one", "--batch-size", "3")
    assert r.exit_code == 0 and "1 PNG(s) written" in r.output and "(6 already there)" in r.output, r.output
    again = images(tmp_path / "one")
    assert all(np.array_equal(one[k], again[k]) for k in one)
    assert len({one[k].tobytes() for k in one}) == 7  # different seeds, different images


def test_py_specs_give_a_network_or_a_ready_score_and_bad_ones_say_why(tmp_path, py_model):
    from scoresde.evaluation.resolve import resolve_model

    m = resolve_model(py_model)
    assert m.shape == (3, 4, 4) and m.sde.N == 50
    assert m.describe == f"{py_model}: predicts v, time input index N·t − 1 (N = 50), {m.sde!r}"
    ready = resolve_model("py:my_models:ready")
    x = torch.ones(2, 3, 4, 4)
    assert torch.equal(ready.score_fn(x, torch.full((2,), 0.5)), -x)
    r = sample("--model", "py:my_models:broken", "--out", tmp_path / "s.npz")
    assert r.exit_code == 2 and "returned unknown key(s) colour" in r.output, r.output
    r = sample("--model", "py:my_models", "--out", tmp_path / "s.npz")
    assert r.exit_code == 2 and "give py:package.module:function" in r.output, r.output


def test_images_need_an_image_model(tmp_path):
    r = sample("--model", "oracle:gmm8", "--images", tmp_path / "x", "--n", "2")
    assert r.exit_code == 2 and "--images needs an image model" in r.output, r.output


@pytest.mark.slow
def test_torchrun_with_two_ranks_writes_the_images_of_one_process(tmp_path):
    (tmp_path / "my_models.py").write_text(MODULE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    args = ["sample", "--model", "py:my_models:build", "--solver", "ddim", "--steps", "5", "--num-samples", "5", "--quiet"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "scoresde.cli",
                    *args, "--images", str(tmp_path / "tr")], env=env, check=True, cwd=tmp_path, timeout=300)
    subprocess.run([sys.executable, "-m", "scoresde.cli", *args, "--images", str(tmp_path / "single")], env=env,
                   check=True, cwd=tmp_path, timeout=300)
    a, b = images(tmp_path / "tr"), images(tmp_path / "single")
    assert a.keys() == b.keys() and len(a) == 5 and all(np.array_equal(a[k], b[k]) for k in a)


def test_compare_scores_a_pretrained_model_against_a_reference_file(tmp_path, py_model):
    ref = np.random.default_rng(0).integers(0, 256, size=(300, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "ref.npy", ref)
    args = ["compare", "--model", py_model, "--solvers", "ddim", "--steps", "5", "--n", "100", "--threads", "1",
            "--no-plots", "--quiet"]
    r = CliRunner().invoke(cli, [*args, "--reference", str(tmp_path / "ref.npy"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert "floors (two disjoint samples of size 100 of ref.npy)" in r.output and "ranked by sw2" in r.output, r.output
    np.save(tmp_path / "bad.npy", ref[:, :1])
    r = CliRunner().invoke(cli, [*args, "--reference", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "--reference: samples have shape (1, 4, 4), the model makes (3, 4, 4)" in r.output, \
        r.output


def test_a_model_without_an_oracle_is_ranked_by_its_own_converged_flow(tmp_path, py_model):
    from scoresde.evaluation.compare import Row, add_path_errors, best_at_nfe, ranked_by
    from scoresde.evaluation.resolve import resolve_model

    # rows within the exact-sample spread on sw2 are ranked by the pathwise error; others by sw2
    rows = [Row("euler", "uniform", "continuous", 10, 10, 0.1, {"sw2": 0.100, "path_err": 0.30}),
            Row("dpmpp_2m", "logsnr", "continuous", 10, 10, 0.1, {"sw2": 0.104, "path_err": 0.05}),
            Row("ddpm", "uniform", "continuous", 10, 10, 0.1, {"sw2": 0.090})]
    assert best_at_nfe(rows, 10, tie=0.0).solver == "ddpm"
    assert best_at_nfe(rows, 10, tie=0.02).solver == "dpmpp_2m" and ranked_by(rows[1], rows, 10) == "path_err"
    assert ranked_by(rows[2], rows, 10) == "sw2"
    # path_err is the RMS per-dimension distance to the pf_ode run, for deterministic runs only
    model = resolve_model(py_model)
    ref = torch.zeros(4, 3, 4, 4)
    samples = {("pf_ode", None): ref, ("euler", 10): ref + 0.5, ("ddpm", 10): ref + 9.0}
    runs = [Row("euler", "uniform", "continuous", 10, 10, 0.1), Row("ddpm", "uniform", "continuous", 10, 10, 0.1),
            Row("pf_ode", "adaptive", "continuous", None, 100, 0.1)]
    assert add_path_errors(runs, samples, model, {})
    assert runs[0].metrics == {"path_err": pytest.approx(0.5)} and runs[1].metrics == {} and runs[2].metrics == {}
    r = CliRunner().invoke(cli, ["compare", "--model", py_model, "--solvers", "ddim,dpmpp_2m,pf_ode", "--steps", "3,6",
                                 "--n", "50", "--threads", "1", "--no-plots", "--quiet", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0 and "ranked by path_err" in r.output, r.output

"""CUDA paths (run with `pytest -m gpu` on a machine with a GPU)."""
import pytest
import torch

import solvers
from scoresde import VESDE, VPSDE
from scoresde.config import from_dict
from scoresde.metrics import mode_metrics
from scoresde.oracle import GaussianMixture

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("solver", solvers.available())
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_every_solver_on_cuda(solver, sde):
    data = GaussianMixture.ring()
    g = torch.Generator(device="cuda").manual_seed(0)
    res = solvers.sample(data.score_fn(sde), sde, shape=(4000, 2), solver=solver, steps=200, generator=g,
                         device="cuda")
    assert res.x.device.type == "cuda"
    q = mode_metrics(res.x, data)
    assert abs(q["std_ratio"] - 1) < 0.08 and q["off_mode"] < 0.01


def test_nan_on_cuda_is_reported_after_the_solve():
    sde = VPSDE()
    with pytest.raises(solvers.SolverError, match=r"NaN or inf at step \d+"):
        solvers.sample(lambda x, t: torch.where(t[:, None] < 0.5, float("nan"), 1.0) * x, sde, shape=(8, 2),
                       solver="heun", steps=10, device="cuda")


@pytest.mark.parametrize("bf16", [False, True])
def test_training_on_cuda(tmp_path, bf16):
    from scoresde.train import Trainer
    cfg = from_dict({"data": {"name": "digits", "batch_size": 64}, "model": {"arch": "unet", "channels": 16},
                     "train": {"steps": 20, "bf16": bf16, "ckpt_every": 0, "device": "cuda"}})
    tr = Trainer(cfg, str(tmp_path), progress=False)
    losses = tr.train()
    assert tr.device.type == "cuda" and len(losses) == 20 and all(l == l for l in losses)


def test_likelihood_on_cuda():
    from scoresde.likelihood import log_likelihood
    sde, data = VPSDE(), GaussianMixture.gaussian(8)
    x = data.sample(16, dtype=torch.float64, device="cuda", generator=torch.Generator().manual_seed(0))
    out = log_likelihood(data.score_fn(sde), sde, x)
    assert out.logp.device.type == "cuda"
    assert (out.logp.cpu() - data.log_prob(x.cpu())).abs().max() < 0.05

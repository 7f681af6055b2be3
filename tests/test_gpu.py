"""CUDA paths (run with `pytest -m gpu` on a machine with a GPU; the `device`-parametrized tests
of the other files run their CUDA case under the same mark)."""
import statistics
import time
import warnings

import pytest
import torch

import solvers
from scoresde import VESDE
from scoresde import VPSDE
from scoresde.training.config import from_dict
from scoresde.evaluation.metrics import mode_metrics
from scoresde.training.nn import MLP, ScoreModel
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
    from scoresde.training.trainer import Trainer
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


# -- CUDA graphs -------------------------------------------------------------------------------------------
FIXED_GRID = ["ddpm", "ddim", "euler_maruyama", "euler", "heun", "dpmpp_2m", "pc"]


def mlp_score(sde=None):
    """The overhead benchmark's network: MLP 256 x 4 blocks as a ScoreModel, on CUDA, eval mode."""
    torch.manual_seed(0)
    return ScoreModel(MLP(2, 256, 4), sde or VPSDE()).cuda().eval()


def cuda_gen(seed=0):
    return torch.Generator(device="cuda").manual_seed(seed)


@pytest.mark.parametrize("solver", FIXED_GRID + ["pf_ode"])
@pytest.mark.parametrize("batch_size", [None, 1500])
def test_cuda_graph_gives_the_eager_samples(solver, batch_size):
    model = mlp_score()
    kw = dict(shape=(4096, 2), solver=solver, steps=20, device="cuda", batch_size=batch_size,
              **({"method": "rk4"} if solver == "pf_ode" else {}))
    eager = solvers.sample(model, model.sde, generator=cuda_gen(), **kw)
    fn = solvers.GraphedScore(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture would warn
        graphed = solvers.sample(fn, model.sde, generator=cuda_gen(), **kw)
    assert not fn.eager and len(fn.graphs) == (1 if batch_size is None else 2)
    assert graphed.nfe == eager.nfe
    torch.testing.assert_close(graphed.x, eager.x, rtol=1e-4, atol=1e-4)


def test_a_score_with_a_host_sync_falls_back_to_eager_on_cuda():
    sde, data = VPSDE(), GaussianMixture.ring()

    def score_fn(x, t):
        if float(t[0]) < 0:  # a host sync: not capturable
            raise AssertionError
        return data.score(x, t, sde)

    kw = dict(shape=(512, 2), solver="heun", steps=10, device="cuda")
    eager = solvers.sample(score_fn, sde, generator=cuda_gen(), **kw).x
    with pytest.warns(RuntimeWarning, match="could not be captured"):
        fallback = solvers.sample(score_fn, sde, generator=cuda_gen(), cuda_graph=True, **kw).x
    assert torch.equal(fallback, eager)
    after = solvers.sample(mlp_score(sde), sde, generator=cuda_gen(), cuda_graph=True, **kw).x  # CUDA still fine
    assert torch.isfinite(after).all()


def test_cuda_graphs_remove_the_per_step_launch_overhead():
    """The issue's small-network case: graphed sampling beats nfe x one eager network call."""
    model = mlp_score()
    x, t = torch.randn(8192, 2, device="cuda"), torch.full((8192,), 0.5, device="cuda")

    def wall(f, reps=5):
        f()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with torch.no_grad():
        call = wall(lambda: model(x, t), reps=21)
    fn = solvers.GraphedScore(model)
    for solver in ("euler", "dpmpp_2m"):
        run = wall(lambda: solvers.sample(fn, model.sde, shape=(8192, 2), solver=solver, steps=50, device="cuda",
                                          generator=cuda_gen()))
        assert run < 50 * call, f"{solver}: {run:.4f} s for 50 steps, one eager call {call * 1e3:.3f} ms"


def test_batch_size_on_cuda_gives_the_one_batch_samples():
    sde, data = VPSDE(), GaussianMixture.ring()
    kw = dict(shape=(10000, 2), solver="euler_maruyama", steps=50, device="cuda", dtype=torch.float64)
    whole = solvers.sample(data.score_fn(sde), sde, generator=cuda_gen(3), **kw).x
    parts = solvers.sample(data.score_fn(sde), sde, generator=cuda_gen(3), batch_size=3000, **kw).x
    torch.testing.assert_close(parts, whole, rtol=1e-10, atol=1e-10)

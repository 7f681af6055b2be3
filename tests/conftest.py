import numpy as np
import pytest
import torch

from fake_device import second_device
from scoresde import SubVPSDE
from scoresde import VESDE
from scoresde import VPSDE
from scoresde.sde import DiscreteVPSDE

SDE_FACTORIES = {
    "vp": lambda: VPSDE(),
    "vp-cosine": lambda: VPSDE(schedule="cosine"),
    "subvp": lambda: SubVPSDE(),
    "ve": lambda: VESDE(),
    "vp-discrete": lambda: DiscreteVPSDE("squaredcos_cap_v2", N=500),  # a diffusers table, N != 1000
}


@pytest.fixture(params=list(SDE_FACTORIES))
def any_sde(request):
    return SDE_FACTORIES[request.param]()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


DEVICES = ["cpu", "other",
           pytest.param("cuda", marks=[pytest.mark.gpu,
                                       pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.fixture(params=DEVICES)
def device(request):
    """A test that takes `device` runs on the CPU; on "other", a second device that is really the
    CPU (tests/fake_device.py: any mixing of devices raises, as on CUDA, and the numbers are the
    CPU's bit for bit); and on CUDA with `pytest -m gpu` where there is one."""
    if request.param == "other":
        with second_device() as dev:
            yield dev
    else:
        yield torch.device(request.param)


def assert_matches_cpu(got: torch.Tensor, want: torch.Tensor, device, rtol: float = 1e-6, atol: float = 1e-8):
    """`got` (computed on `device`) is on that device and equals the CPU result `want`: bit for bit
    on the CPU and its stand-in, to rtol/atol on CUDA (other kernels, other rounding)."""
    assert got.device.type == torch.device(device).type, f"result on {got.device}, expected {device}"
    got = got.detach().cpu()
    if torch.device(device).type == "cuda":
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    else:
        assert torch.equal(got, want), (got - want).abs().max()


def _threads(k: int):
    before = torch.get_num_threads()
    torch.set_num_threads(k)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (tiny tensors: a second thread only adds hand-offs)."""
    yield from _threads(1)


@pytest.fixture
def two_threads():
    """Run a test on two intra-op threads, and restore the count after it."""
    yield from _threads(2)


def solvers_without_a_case(trait: str, cases) -> set:
    """The solvers whose SolverSpec declares `trait` ('order' or 'weak_order', at default options)
    but that no (solver, grid, options) case in `cases` measures."""
    import solvers

    declared = {name for name in solvers.available() if getattr(solvers.traits(name), trait) is not None}
    return declared - {case[0] for case in cases}


def measured_order(sde, solver: str, grid: str, opts: dict, Ks=(20, 40, 80, 160), error=None):
    """Slope of log(error) against log K for `solver`, and the errors themselves.  The error is by
    default the max distance to the 4-D Gaussian's closed-form probability flow from T to
    sde.default_eps (float64); `error(K) -> float` replaces it (e.g. a weak error)."""
    import solvers
    from scoresde.oracle import GaussianMixture

    if error is None:
        data = GaussianMixture.gaussian(4)
        xT = sde.prior_sample((64, 4), generator=gen(0), dtype=torch.float64)
        eps = sde.default_eps
        truth = data.flow(xT, sde.T, eps, sde)

        def error(K):
            return (solvers.sample(data.score_fn(sde), sde, x_T=xT, solver=solver, steps=K, grid=grid, eps=eps,
                                   **opts).x - truth).abs().max().item()
    errs = [error(K) for K in Ks]
    return -np.polyfit(np.log(Ks), np.log(errs), 1)[0], errs

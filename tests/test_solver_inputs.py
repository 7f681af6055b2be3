"""eps within the solve dtype's resolution of T: one clear SolverError for every solver (issue 26.4)."""
import pytest
import torch

import solvers
from scoresde.sde import VPSDE, SubVPSDE, VESDE
from solvers import SolverError

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
EPS = 1 - 1e-12


def _score(x, t):
    return -x


@pytest.mark.parametrize("solver", solvers.available())
@pytest.mark.parametrize("name", list(SDES))
def test_eps_rounding_to_T_in_float32_names_eps(solver, name):
    sde = SDES[name]()
    grid = "uniform"
    with pytest.raises(SolverError) as e:
        solvers.sample(_score, sde, shape=(4, 2), solver=solver, steps=4, grid=grid, eps=EPS * sde.T,
                       generator=torch.Generator().manual_seed(0))
    assert "eps" in str(e.value) and "float32" in str(e.value)


@pytest.mark.parametrize("solver", solvers.available())
@pytest.mark.parametrize("name", list(SDES))
def test_eps_near_T_in_float64_works(solver, name):
    sde = SDES[name]()  # T − 1e-12 is ~4500 float64 spacings below T = 1: every solver runs
    res = solvers.sample(_score, sde, shape=(4, 2), solver=solver, steps=4, grid="uniform", eps=EPS * sde.T,
                         generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert res.x.dtype == torch.float64


def test_normal_eps_passes_the_check():
    sde = VPSDE()
    for kind in solvers.GRIDS:
        solvers.grids.check_resolution(sde, solvers.time_grid(sde, 50, kind, sde.default_eps), torch.float32)
    res = solvers.sample(_score, sde, shape=(8, 2), solver="heun", steps=6, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(res.x).all()

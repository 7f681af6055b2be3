"""The shipped tuned grids (solvers/tuned.py, solvers/tuned_grids.json): valid, reproduced at
the fitted step counts, and better than the named default on fresh ring draws (where they are
defaults: tests/test_fewstep_defaults.py)."""
import json

import pytest
import torch
from click.testing import CliRunner

import solvers
from scoresde import SubVPSDE
from scoresde import VESDE
from scoresde import VPSDE
from scoresde.cli import cli
from scoresde.oracle import GaussianMixture
from solvers import tuned
from solvers.optimize import reference_solution

from conftest import gen

pytestmark = pytest.mark.usefixtures("one_thread")

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
ENTRIES = json.load(open(tuned.PATH))["grids"]


def test_the_table_covers_every_sde_and_the_few_step_solvers():
    have = {(e["sde"], e["solver"]) for e in ENTRIES}
    for sde in SDES:
        for name in ("dpmpp_2m", "dpmpp_3m", "unipc", "deis", "euler", "heun", "euler_t", "heun_t"):
            assert (sde, name) in have
    assert all(e["source"] == "fitted" or e["source"] in solvers.GRIDS for e in ENTRIES)


def sigma_tilde(sde, ts: torch.Tensor) -> torch.Tensor:
    m, s = sde.marginal(ts)
    return s / m


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e['sde']}-{e['solver']}-{e['steps']}")
def test_the_tuned_grid_is_the_stored_shape_in_edms_sigma(entry):
    """At its fitted step count the grid is strictly decreasing from T to eps, and its σ̃ = σ/m
    is the documented ρ = 7 ladder built by hand from the stored shape u:
    σ̃_i = (σ̃_max^{1/7} − u_i·(σ̃_max^{1/7} − σ̃_min^{1/7}))^7."""
    sde = SDES[entry["sde"]]()
    u = torch.tensor(entry["shape"], dtype=torch.float64)
    assert u[0] == 0 and u[-1] == 1 and bool((u[1:] > u[:-1]).all())
    ts = tuned.tuned_grid(entry["solver"], sde, entry["steps"], entry["eps"])
    assert ts.numel() == entry["steps"] + 1
    assert ts[0] == sde.T and ts[-1] == entry["eps"] and bool((ts[1:] < ts[:-1]).all())
    lo, hi = sigma_tilde(sde, ts[[-1, 0]])
    want = (hi ** (1 / 7) - u * (hi ** (1 / 7) - lo ** (1 / 7))) ** 7
    torch.testing.assert_close(sigma_tilde(sde, ts), want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 12, 33, 200])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_other_step_counts_and_end_times_give_valid_grids(sde_name, steps):
    sde = SDES[sde_name]()
    for solver, eps in (("dpmpp_2m", sde.default_eps), ("heun", 0.0), ("unipc", 3e-3)):
        ts = tuned.tuned_grid(solver, sde, steps, eps)
        assert ts.numel() == steps + 1 and ts[0] == sde.T and ts[-1] == eps
        assert bool((ts[1:] < ts[:-1]).all())


def test_grid_tuned_equals_the_explicit_grid():
    sde = VPSDE()
    score = GaussianMixture.ring().score_fn(sde)
    res = solvers.sample(score, sde, shape=(32, 2), solver="deis", steps=9, grid="tuned", generator=gen(1))
    assert res.grid == "tuned"
    want = tuned.tuned_grid("deis", sde, 9, sde.default_eps)
    assert torch.equal(res.t_grid, want)
    again = solvers.sample(score, sde, shape=(32, 2), solver="deis", grid=want, generator=gen(1))
    assert torch.equal(res.x, again.x)
    assert solvers.sample(score, sde, shape=(8, 2), solver="unipc", steps=9, grid="tuned", generator=gen()).grid \
        == "tuned"


def test_solvers_and_sdes_without_a_table_keep_their_named_default():
    cos = VPSDE(schedule="cosine")
    assert solvers.default_grid("dpmpp_2m", cos) == "logsnr"
    assert solvers.default_grid("ddim", VPSDE()) == "uniform" and solvers.default_grid("ddpm", VESDE()) == "uniform"
    score = GaussianMixture.ring().score_fn(cos)
    assert solvers.sample(score, cos, shape=(8, 2), solver="dpmpp_2m", steps=4, generator=gen()).grid == "logsnr"
    with pytest.raises(solvers.SolverError, match=r"no tuned grid for solver 'ddpm'.*use a named grid"):
        solvers.sample(score, VPSDE(), shape=(8, 2), solver="ddpm", steps=4, grid="tuned", generator=gen())
    with pytest.raises(solvers.SolverError, match="steps must be an integer >= 1, got 0"):
        solvers.sample(score, VPSDE(), shape=(8, 2), solver="unipc", steps=0, generator=gen())


@pytest.mark.parametrize("sde_name, solver", [("vp", "dpmpp_2m"), ("subvp", "unipc"), ("ve", "deis")])
def test_the_tuned_grid_beats_the_named_default_on_fresh_ring_draws(sde_name, solver):
    """Pathwise error to the ODE's dopri5 solution at 10 nfe from draws the fit never saw."""
    sde = SDES[sde_name]()
    score = GaussianMixture.ring().score_fn(sde)
    x_T = sde.prior_sample((512, 2), generator=gen(11), dtype=torch.float64)
    ref = reference_solution(solvers.sample, score, sde, x_T, sde.default_eps, False)

    def err(grid):
        x = solvers.sample(score, sde, x_T=x_T, solver=solver, steps=10, grid=grid).x
        return float((x - ref).pow(2).sum(1).mean().sqrt())

    assert err("tuned") < 0.6 * err(solvers.named_default_grid(solver, sde))


def test_the_cli_takes_and_lists_the_tuned_grid(tmp_path):
    out = CliRunner().invoke(cli, ["solvers"])
    assert out.exit_code == 0 and "grid=tuned available" in out.output
    listed = [ln for ln in out.output.splitlines() if "grid=tuned available" in ln]
    assert {ln.split()[0] for ln in listed} == set(tuned.largest_fitted())
    out = CliRunner().invoke(cli, ["sample", "--solver", "ddpm", "--grid", "tuned", "--steps", "3",
                                   "--n", "8", "--out", str(tmp_path / "s.npz")])
    assert out.exit_code != 0 and "no tuned grid for solver 'ddpm'" in out.output

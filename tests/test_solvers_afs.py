"""sample(afs=True), the analytical first step: the score at T is that of N(0, σ(T)²I), one call fewer."""

import pytest
import torch

import solvers
from conftest import SDE_FACTORIES, gen
from scoresde.oracle import GaussianMixture

GRID_LOOP = [s for s in solvers.available() if solvers.SOLVERS[s].grid_loop]
DATA = GaussianMixture([[1.0, -0.5], [-2.0, 1.5]], [[0.3, 0.3], [0.1, 0.1]], [0.6, 0.4])


def prior_score_first(score_fn, sde):
    """score_fn whose first call returns −x/σ(t)², the score of N(0, σ(t)²I), written out."""
    calls = []

    def fn(x, t):
        calls.append(float(t[0]))
        if len(calls) == 1:
            return -x / sde.std(t)[:, None] ** 2
        return score_fn(x, t)
    return fn, calls


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("solver", GRID_LOOP)
def test_afs_replaces_the_first_call_at_T_by_the_prior_score(solver, sde_name):
    sde = SDE_FACTORIES[sde_name]()
    xT = sde.prior_sample((64, 2), generator=gen(0), dtype=torch.float64)
    score_fn = DATA.score_fn(sde)
    plain = solvers.sample(score_fn, sde, x_T=xT, solver=solver, steps=6, generator=gen(1))
    fn, calls = prior_score_first(score_fn, sde)
    want = solvers.sample(fn, sde, x_T=xT, solver=solver, steps=6, generator=gen(1))
    got = solvers.sample(score_fn, sde, x_T=xT, solver=solver, steps=6, generator=gen(1), afs=True)
    assert calls[0] == sde.T  # the replaced call is the one at T
    assert got.nfe == plain.nfe - 1 == want.nfe - 1
    torch.testing.assert_close(got.x, want.x, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got.x, plain.x)


@pytest.mark.parametrize("solver", ["ipndm", "dpmpp_2m", "unipc", "euler"])
def test_afs_is_exact_for_standard_normal_data_under_vp(solver):
    """For N(0, I) data the VP marginal is N(0, I) at every t, score −x, and σ(T)² = 1 − m(T)²: the
    analytic score misses by the factor 1/(1 − m(T)²), m(T)² ≈ 4e-5, so the samples agree to that
    order (times the few multistep weights, ≤ 55/24 each, that carry ε̂_0 on)."""
    sde = SDE_FACTORIES["vp"]()
    data = GaussianMixture.gaussian(2, mean=[0.0, 0.0], stds=[1.0, 1.0])
    xT = sde.prior_sample((256, 2), generator=gen(0), dtype=torch.float64)
    plain = solvers.sample(data.score_fn(sde), sde, x_T=xT, solver=solver, steps=8)
    got = solvers.sample(data.score_fn(sde), sde, x_T=xT, solver=solver, steps=8, afs=True)
    m_T = float(sde.marginal(torch.tensor([sde.T], dtype=torch.float64))[0])
    assert 0 < (got.x - plain.x).abs().max() < 20 * m_T ** 2


def test_afs_first_step_misses_by_the_data_mean_in_edm_variables():
    """Euler in x̃ = x/m, σ̃ = σ/m: one step with ε̂ = x̃/σ̃ instead of (x̃ − D)/σ̃ lands
    (σ̃_1 − σ̃_0)·D(x̃_T)/σ̃_0 away in x̃, D the exact denoiser at T (≈ the data mean)."""
    sde = SDE_FACTORIES["ve"]()
    xT = sde.prior_sample((128, 2), generator=gen(0), dtype=torch.float64)
    score_fn = DATA.score_fn(sde)
    seen = {}

    def after_first(run):
        return lambda info: seen.setdefault(run, info["x"]) if info["i"] == 0 else None
    solvers.sample(score_fn, sde, x_T=xT, solver="euler", steps=5, grid="edm", callback=after_first("net"))
    res = solvers.sample(score_fn, sde, x_T=xT, solver="euler", steps=5, grid="edm", afs=True,
                         callback=after_first("afs"))
    t = res.t_grid[:2]
    m, s = (v.tolist() for v in sde.marginal(t))
    st = [s[0] / m[0], s[1] / m[1]]
    tT = torch.full((128,), sde.T, dtype=torch.float64)
    D = (xT + s[0] ** 2 * score_fn(xT, tT)) / m[0]  # Tweedie: E[x_0 | x_T]
    predicted = (st[1] - st[0]) * D / st[0]
    torch.testing.assert_close((seen["afs"] - seen["net"]) / m[1], predicted, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver, options", [("pf_ode", {}), ("pf_ode", {"method": "rk4"}), ("torchsde", {})])
def test_afs_refused_where_a_library_chooses_the_calls(solver, options):
    sde = SDE_FACTORIES["vp"]()
    with pytest.raises(solvers.SolverError, match="afs=True needs a solver that steps on the grid"):
        solvers.sample(DATA.score_fn(sde), sde, shape=(4, 2), solver=solver, steps=4, afs=True, generator=gen(0),
                       **options)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_afs_must_be_a_bool(bad):
    sde = SDE_FACTORIES["vp"]()
    with pytest.raises(solvers.SolverError, match="afs must be True or False"):
        solvers.sample(DATA.score_fn(sde), sde, shape=(4, 2), solver="ipndm", steps=4, afs=bad)


def test_the_cli_takes_afs_as_an_option_of_the_solvers_that_step_on_the_grid(tmp_path):
    import json

    from click.testing import CliRunner

    from scoresde.cli import cli

    runner = CliRunner()
    args = ["--solvers", "ipndm,pf_ode", "--steps", "5", "--n", "200", "--quiet", "--no-plots"]
    plain = runner.invoke(cli, ["compare", *args, "--out", str(tmp_path / "plain")])
    afs = runner.invoke(cli, ["compare", *args, "-o", "afs=true", "--out", str(tmp_path / "afs")])
    assert plain.exit_code == 0 and afs.exit_code == 0, afs.output
    rows = {run: {r["solver"]: r for r in json.load(open(tmp_path / run / "results.json"))["rows"]}
            for run in ("plain", "afs")}
    assert rows["afs"]["ipndm"]["nfe"] == rows["plain"]["ipndm"]["nfe"] - 1 == 4
    assert rows["afs"]["pf_ode"]["nfe"] == rows["plain"]["pf_ode"]["nfe"]  # pf_ode does not take it
    out = runner.invoke(cli, ["sample", "--solver", "pf_ode", "-o", "afs=true", "--n", "4", "--quiet",
                              "--out", str(tmp_path / "x.npz")])
    assert out.exit_code == 2 and "afs" in out.output and "Traceback" not in out.output, out.output

"""The likelihood's default method comes from a cost model with a stated budget, the plan is
printed before the run, and progress is reported from inside each ODE solve."""
import pytest
import torch
from click.testing import CliRunner

from scoresde import VPSDE
from scoresde.cli import cli
from scoresde.cli.likelihood import SolveProgress
from scoresde.likelihood import EXPECTED_NFE, bits_per_dim_estimate, log_likelihood, plan_likelihood
from scoresde.oracle import GaussianMixture


def gaussian(D):
    """A one-component mixture in D dimensions (exact score, cheap)."""
    return GaussianMixture(torch.zeros(1, D, dtype=torch.float64), 0.25)


def test_exact_trace_is_modelled_at_D_times_one_probe_and_chosen_only_within_budget():
    sde, data = VPSDE(), gaussian(64)
    x = data.sample(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plan = plan_likelihood(data.score_fn(sde), sde, x, budget_s=0.0)
    assert plan.method == "hutchinson" and plan.D == 64 and "over the 0 s budget" in plan.reason
    assert plan.exact_s == pytest.approx(64 * plan.estimate_s)  # D products per evaluation against 1
    assert plan.estimate_s == pytest.approx(32 * EXPECTED_NFE * plan.sec_per_pass)
    assert plan_likelihood(data.score_fn(sde), sde, x, budget_s=1e9).method == "exact"
    forced = plan_likelihood(data.score_fn(sde), sde, x, "exact", budget_s=0.0)
    assert forced.method == "exact" and forced.reason == "as asked"


def test_default_method_follows_the_plan():
    sde, data = VPSDE(), gaussian(2)
    x = data.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    est = bits_per_dim_estimate(data.score_fn(sde), sde, x, bits=None, rtol=1e-3, atol=1e-3,
                                generator=torch.Generator().manual_seed(1))
    assert est.method == plan_likelihood(data.score_fn(sde), sde, x).method == "exact"


def test_on_eval_reports_every_evaluation_from_inside_the_solve():
    sde, data = VPSDE(), gaussian(2)
    x = data.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen, chunks = [], []
    res = log_likelihood(data.score_fn(sde), sde, x, rtol=1e-4, atol=1e-4, batch_size=4,
                         on_eval=lambda t, nfe: seen.append((t, nfe, len(chunks))), callback=chunks.append)
    assert len(seen) == res.nfe and chunks == [4, 4]
    first = [s for s in seen if s[2] == 0]  # evaluations of the first solve, before its chunk callback
    assert [s[1] for s in first] == list(range(1, len(first) + 1))
    assert first[0][0] < 0.1 < max(s[0] for s in first) <= sde.T + 1e-12


def test_the_bar_moves_during_a_solve_and_ends_full():
    with SolveProgress(2, T=1.0, eps=0.0, disable=True) as p:
        p.evaluated(0.25, 3)
        assert p.bar.n == pytest.approx(0.25) and "nfe 3" in p.bar.postfix
        p.evaluated(0.1, 4)  # a rejected step retried earlier does not move the bar back
        assert p.bar.n == pytest.approx(0.25)
        p.solved(8)
        assert p.bar.n == 1
        p.evaluated(0.5, 2)
        assert p.bar.n == pytest.approx(1.5) and "nfe 6" in p.bar.postfix
        p.solved(8)
        assert p.bar.n == 2


def test_cli_prints_the_plan_before_the_run():
    r = CliRunner().invoke(cli, ["likelihood", "--model", "oracle:gmm8", "--n", "8", "--rtol", "1e-3", "--atol", "1e-3",
                                 "--threads", "1"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    plan = next(i for i, ln in enumerate(lines) if ln.startswith("plan: method exact ("))
    assert "within the 60 s budget" in lines[plan] and f"1 x 1 solve(s) of ~{EXPECTED_NFE} evaluations -> about" in lines[plan]
    assert plan < next(i for i, ln in enumerate(lines) if ln.startswith("log p"))
    r = CliRunner().invoke(cli, ["likelihood", "--model", "oracle:gmm8", "--n", "8", "--method", "hutchinson",
                                 "--threads", "1", "--rtol", "1e-3", "--atol", "1e-3"])
    assert r.exit_code == 0 and "plan: method hutchinson (as asked)" in r.output, r.output


def test_help_states_the_budget_the_library_uses():
    from scoresde.likelihood import EXACT_BUDGET_S

    r = CliRunner().invoke(cli, ["likelihood", "--help"])
    assert f"exact when its modelled time fits {EXACT_BUDGET_S:g} s" in " ".join(r.output.split())

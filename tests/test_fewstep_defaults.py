"""The few-step defaults (solvers/fewstep.py, solvers/fewstep_defaults.json): sample() applies
them, the stored choice follows its own rule from its evidence, and the CLI listing and the docs
name the same defaults."""
import json
import os

import pytest
import torch
from click.testing import CliRunner

import solvers
from conftest import gen
from scoresde import SubVPSDE, VESDE, VPSDE
from scoresde.cli import cli
from scoresde.oracle import GaussianMixture
from solvers import fewstep

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
RAW = json.load(open(fewstep.PATH))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_table_covers_every_family_and_budget():
    assert set(RAW["grids"]) == set(SDES) == set(RAW["best"])
    for fam in SDES:
        assert sorted(int(b) for b in RAW["best"][fam]) == list(RAW["budgets"])
        for name, by_k in RAW["grids"][fam].items():
            assert solvers.traits(name).order is not None  # deterministic: a pathwise error exists
            assert all(g == "tuned" or g in solvers.GRIDS for g in by_k.values())


@pytest.mark.parametrize("fam", list(SDES))
def test_sample_uses_the_chosen_grid_and_the_named_one_beyond(fam):
    sde = SDES[fam]()
    score = GaussianMixture.ring().score_fn(sde)
    for name, by_k in fewstep.table()["grids"][fam].items():
        for K, grid in by_k.items():
            assert solvers.default_grid(name, sde, K) == grid
        res = solvers.sample(score, sde, shape=(4, 2), solver=name, steps=min(by_k), generator=gen())
        assert res.grid == by_k[min(by_k)]
        assert solvers.default_grid(name, sde, max(by_k) + 1) == solvers.named_default_grid(name, sde)
        assert solvers.default_grid(name, sde) == solvers.named_default_grid(name, sde)  # 50 steps


def test_an_sde_outside_the_families_keeps_the_named_default():
    cos = VPSDE(schedule="cosine")
    assert fewstep.grid_for("dpmpp_2m", cos, 5) is None and solvers.recommended(cos, 10) is None
    assert solvers.default_grid("dpmpp_2m", cos, 5) == "logsnr"


@pytest.mark.parametrize("fam", list(SDES))
def test_the_recommendation_is_a_default_call_within_its_budget(fam):
    """recommended(sde, b) names a solver and steps whose plain sample() call (no grid) runs on the
    named grid and uses at most b score evaluations; between budgets the smaller one applies."""
    sde = SDES[fam]()
    score = GaussianMixture.ring().score_fn(sde)
    for b in RAW["budgets"]:
        rec = solvers.recommended(sde, b)
        assert rec["budget"] == b
        res = solvers.sample(score, sde, shape=(4, 2), solver=rec["solver"], steps=rec["steps"], generator=gen())
        assert res.grid == rec["grid"] and res.nfe <= b
        if b + 1 not in RAW["budgets"]:
            assert solvers.recommended(sde, b + 1)["budget"] == b
    assert solvers.recommended(sde, min(RAW["budgets"]) - 1) is None


def test_the_stored_choice_follows_its_rule_from_its_evidence():
    """Per (family, budget, solver): the grid with the lowest choose-part score (with tuned_veto, a
    'tuned' winner yields to the best named grid where that one is better on the held-out part);
    per budget the solver with the lowest choose-part score on its grid."""
    assert RAW["rule"] in ("gmean", "max") and set(RAW["held_out"]) == set(SDES)
    for fam, by_b in RAW["evidence"].items():
        for b, by_solver in by_b.items():
            chosen_err = {}
            for name, cell in by_solver.items():
                ev = cell["errors"]
                assert set(ev) <= set(solvers.GRIDS) | {"tuned"}  # only the library's grids compete
                want = min(ev, key=lambda g: ev[g][0])
                named = min((g for g in ev if g != "tuned"), key=lambda g: ev[g][0])
                if RAW["tuned_veto"] and want == "tuned" and ev["tuned"][1] is not None \
                        and ev["tuned"][1] > ev[named][1]:
                    want = named
                assert RAW["grids"][fam][name][str(cell["K"])] == want, (fam, b, name, want)
                chosen_err[name] = ev[want][0]
            assert RAW["best"][fam][b]["solver"] == min(chosen_err, key=chosen_err.get)


def test_the_cli_listing_and_the_docs_name_the_same_defaults():
    out = CliRunner().invoke(cli, ["solvers"]).output
    docs = open(os.path.join(ROOT, "docs", "solvers.md")).read()
    for fam in SDES:
        line = fewstep.summary(fam)
        assert line and line in out, (fam, line)
        assert line in docs, f"docs/solvers.md does not state the {fam} recommendation: {line}"
    for name in ("dpmpp_2m", "deis"):
        row = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
        for fam, by_k in fewstep.table()["grids"].items():
            if name in by_k:
                assert f"{fam}: " + ", ".join(f"{k} steps {g}" for k, g in sorted(by_k[name].items())) in row


def test_ddpms_own_table_is_the_vp_family_and_other_tables_are_not():
    """A diffusers model on DDPM's linear β table (1e-4 … 0.02, N = 1000) is the linear VP SDE on the
    lattice (β(t) = −N·log(1 − β_k) from 0.1 to 20), so it gets the VP few-step defaults; a cosine
    table, another N or other β ends keep the named defaults."""
    from scoresde.sde import DiscreteVPSDE

    ddpm = DiscreteVPSDE()
    assert solvers.tuned.sde_key(ddpm) == "vp"
    vp = VPSDE()
    t = torch.linspace(1e-3, 1, 50, dtype=torch.float64)
    assert torch.allclose(ddpm.std(t), vp.std(t), atol=2e-3)  # the same path, to the table's rounding
    for name, by_k in fewstep.table()["grids"]["vp"].items():
        assert solvers.default_grid(name, ddpm, min(by_k)) == by_k[min(by_k)]
    assert solvers.recommended(ddpm, 10) == solvers.recommended(vp, 10)
    for other in (DiscreteVPSDE(beta_schedule="squaredcos_cap_v2"), DiscreteVPSDE(N=500),
                  DiscreteVPSDE(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)):
        assert solvers.tuned.sde_key(other) is None
        assert solvers.recommended(other, 10) is None

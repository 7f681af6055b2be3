"""Classifier-free guidance and the exact conditional oracle: the conditional score is the gradient
of the closed-form log p_t(x | c), guidance is one batched call that every solver and the
likelihood take unchanged, and guided samples are scored by class."""
import math

import pytest
import torch

import solvers
from conftest import SDE_FACTORIES
from scoresde.evaluation.metrics import class_metrics
from scoresde.guidance import class_index, guided_score_fn
from scoresde.likelihood import log_likelihood
from scoresde.oracle import GaussianMixture, make_oracle


def _x(n=40, seed=0, scale=3.0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_conditional_score_is_the_gradient_of_the_conditional_log_density(sde_name):
    sde, o = SDE_FACTORIES[sde_name](), make_oracle("gmm8c4")
    x = _x().requires_grad_(True)
    t = torch.linspace(1e-3, 1, x.shape[0], dtype=torch.float64)
    y = torch.arange(x.shape[0]) % (o.num_classes + 1)  # every class and "no label" (index 4)
    logp = o.log_prob_t(x, t, sde, y)
    grad = torch.autograd.grad(logp.sum(), x)[0]
    torch.testing.assert_close(o.score(x.detach(), t, sde, y), grad, rtol=1e-8, atol=1e-10)
    # "no label" is the unconditional mixture
    null = y == o.num_classes
    torch.testing.assert_close(logp[null], o.log_prob_t(x.detach(), t, sde)[null])


def test_the_class_conditionals_mix_back_to_the_marginal():
    """p_t(x) = Σ_c P(c)·p_t(x | c), P(c) the class's share of the weights (unequal here)."""
    sde, ring = SDE_FACTORIES["vp"](), GaussianMixture.ring(8)
    w = torch.arange(1, 9, dtype=torch.float64)
    o = GaussianMixture(ring.means, 0.04, w, classes=[0, 0, 1, 1, 2, 2, 2, 3])
    x, t = _x(), torch.full((40,), 0.3, dtype=torch.float64)
    pc = torch.stack([o.weights[o.classes == c].sum() for c in range(4)])
    mix = torch.logsumexp(torch.stack([pc[c].log() + o.log_prob_t(x, t, sde, c) for c in range(4)]), 0)
    torch.testing.assert_close(mix, o.log_prob_t(x, t, sde))
    # and a class's conditional at t = 0 is its own sub-mixture
    torch.testing.assert_close(o.log_prob(x, 2), o.conditional(2).log_prob(x))


def test_guided_score_is_the_cfg_combination_from_one_batched_call():
    sde, o = SDE_FACTORIES["vp"](), make_oracle("gmm8c4")
    calls = []

    def cond(x, t, y):
        calls.append(x.shape[0])
        return o.score(x, t, sde, y)
    x, t = _x(), torch.full((40,), 0.4, dtype=torch.float64)
    s_c, s_u = o.score(x, t, sde, 1), o.score(x, t, sde)
    for w in (0.0, 0.5, 3.0, -1.0):
        calls.clear()
        got = guided_score_fn(cond, 1, w, o.num_classes)(x, t)
        torch.testing.assert_close(got, (1 + w) * s_c - w * s_u)
        # ε form: ε_∅ + s·(ε_c − ε_∅) with s = 1 + w is the same number (ε = −σ·score)
        sig = sde.std(t)[:, None]
        torch.testing.assert_close(-sig * got, -sig * s_u + (1 + w) * (-sig * s_c + sig * s_u))
        assert calls == ([40] if w == 0 else [80])  # one call; the stacked batch only when guiding


def test_guidance_counts_one_evaluation_per_solver_call():
    sde, o = SDE_FACTORIES["vp"](), make_oracle("gmm8c4")
    fn = guided_score_fn(o.cond_score_fn(sde), 0, 2.0, o.num_classes)
    plain = solvers.sample(o.score_fn(sde), sde, shape=(64, 2), solver="heun", steps=10,
                           generator=torch.Generator().manual_seed(0))
    guided = solvers.sample(fn, sde, shape=(64, 2), solver="heun", steps=10, generator=torch.Generator().manual_seed(0))
    assert guided.nfe == plain.nfe


CONVERGED = {"ddpm": 1000, "euler_maruyama": 1000, "torchsde": 500, "pc": 500, "euler": 500, "euler_t": 500,
             "ddim": 200, "dpmpp_2m_sde": 200}  # others: 50 steps; pf_ode: adaptive


@pytest.mark.parametrize("solver", solvers.available())
def test_at_w0_every_solver_lands_on_the_class_modes(solver):
    """w = 0 is the conditional model: class accuracy >= 99.5 % and within-mode W2 at the level
    of exact samples of the class (same n)."""
    sde, o = SDE_FACTORIES["vp"](), make_oracle("gmm8c4")
    n, c = 2000, 2
    fn = guided_score_fn(o.cond_score_fn(sde), c, 0.0, o.num_classes)
    res = solvers.sample(fn, sde, shape=(n, 2), solver=solver, steps=CONVERGED.get(solver, 50),
                         generator=torch.Generator().manual_seed(0))
    q = class_metrics(res.x, o, c)
    exact = class_metrics(o.conditional(c).sample(n, torch.Generator().manual_seed(1)), o, c)
    assert q["class_acc"] >= 0.995, q
    assert q["mode_w2"] < max(2.5 * exact["mode_w2"], 0.08), (q, exact)


def test_guided_likelihood_at_w0_is_the_closed_form_conditional():
    # β_max = 40 makes p_T(x | c) the N(0, I) prior to 1e-4 nats (m(1) = 5e-5), so what is left
    # is the ODE's error; at the default 20, m(1) = 7e-3 shifts each class's p_T by ~0.05 nats
    from scoresde import VPSDE

    sde, o = VPSDE(beta_max=40.0), make_oracle("gmm8c4")
    c = 1
    x = o.conditional(c).sample(64, torch.Generator().manual_seed(2), dtype=torch.float64)
    fn = guided_score_fn(o.cond_score_fn(sde), c, 0.0, o.num_classes)
    out = log_likelihood(fn, sde, x, method="exact", rtol=1e-6, atol=1e-6)
    # the ODE starts at eps = 1e-5: compare with the closed form of p_eps(x | c)
    want = o.log_prob_t(x, torch.full((64,), sde.likelihood_eps, dtype=torch.float64), sde, c)
    torch.testing.assert_close(out.logp, want, rtol=0, atol=2e-3)
    assert float((want - o.log_prob_t(x, torch.full((64,), sde.likelihood_eps, dtype=torch.float64), sde)).mean()) \
        == pytest.approx(math.log(4), abs=0.05)  # knowing the class is worth log 4 nats here


def test_class_accuracy_rises_and_diversity_falls_with_w_where_the_classes_overlap():
    """oracle:gmm8c4-overlap: std 0.6 modes and a heavy mode 7 beside class arc0's mode 0.  At w = 0
    some samples of arc0 are nearer another class's mode (the data's own overlap); guidance raises
    the accuracy, shifts arc0's samples from mode 0 to mode 1 (diversity falls) and moves them off
    the modes' centres (within-mode W2 grows): the trade-off guidance makes."""
    sde, o = SDE_FACTORIES["vp"](), make_oracle("gmm8c4-overlap")
    rows = []
    for w in (0.0, 1.0, 3.0):
        fn = guided_score_fn(o.cond_score_fn(sde), 0, w, o.num_classes)
        x = solvers.sample(fn, sde, shape=(2000, 2), solver="dpmpp_2m", steps=20,
                           generator=torch.Generator().manual_seed(0)).x
        rows.append(class_metrics(x, o, 0))
    acc, div, w2 = ([r[k] for r in rows] for k in ("class_acc", "diversity", "mode_w2"))
    exact = class_metrics(o.conditional(0).sample(2000, torch.Generator().manual_seed(0)), o, 0)["class_acc"]
    assert exact < 0.997 and abs(acc[0] - exact) < 0.005, (acc, exact)  # w = 0 is the data's own overlap
    assert acc[0] < acc[1] <= acc[2] and acc[1] > 0.999, acc
    assert div[0] > 0.99 and div[0] > div[1] + 0.03 > div[2] + 0.1, div
    assert w2[0] < w2[1] < w2[2], w2


def test_class_names_indices_and_bad_labels():
    names = ["arc0", "arc1", "arc2", "arc3"]
    assert class_index("arc2", names) == 2 and class_index(3, names) == 3 and class_index("1", names) == 1
    with pytest.raises(ValueError, match=r"class 'cat' is not one of the model's classes \(arc0, arc1, arc2, arc3\)"):
        class_index("cat", names)
    with pytest.raises(ValueError, match=r"class index 4 is out of range: the model has 4 classes, indices 0…3"):
        class_index(4, names)
    o = make_oracle("gmm8c4")
    with pytest.raises(ValueError, match=r"class label 5 is out of range: labels must lie in 0…4 \(4 is 'no label'\)"):
        o.score(_x(2), 0.5, SDE_FACTORIES["vp"](), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"class label 4 is out of range: labels must lie in 0…3"):
        guided_score_fn(o.cond_score_fn(SDE_FACTORIES["vp"]()), 4, 1.0, 4)
    with pytest.raises(ValueError, match="has no classes"):
        make_oracle("gmm8").score(_x(2), 0.5, SDE_FACTORIES["vp"](), 0)
    with pytest.raises(ValueError, match="guidance w must be a finite number, got nan"):
        guided_score_fn(o.cond_score_fn(SDE_FACTORIES["vp"]()), 0, float("nan"), 4)

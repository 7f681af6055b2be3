"""ε ↔ x̂_0 ↔ v ↔ score: every map against the definition x_t = m·x_0 + σ·ε, both ways, on VP
(m² + σ² = 1) and off it (VE, sub-VP)."""
import pytest
import torch

from scoresde import convert
from scoresde.convert import PREDICTIONS, eps_from_prediction, prediction_from_eps

# (m, σ) per sample: VP-like, VE-like (m = 1, σ large) and sub-VP-like (m² + σ² < 1)
CASES = {"vp": (torch.tensor([0.99, 0.6, 0.05]), torch.sqrt(1 - torch.tensor([0.99, 0.6, 0.05]) ** 2)),
         "ve": (torch.ones(3), torch.tensor([0.01, 3.0, 50.0])),
         "subvp": (torch.tensor([0.99, 0.6, 0.05]), 1 - torch.tensor([0.99, 0.6, 0.05]) ** 2)}


def draw(case):
    g = torch.Generator().manual_seed(0)
    m, s = (c.double() for c in CASES[case])
    x0 = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    return x0, eps, m, s, m[:, None, None] * x0 + s[:, None, None] * eps


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_prediction_is_its_definition_and_converts_back_to_the_noise(case):
    x0, eps, m, s, x = draw(case)
    b = lambda c: c[:, None, None]  # noqa: E731
    truth = {"epsilon": eps, "x0": x0, "v": b(m) * eps - b(s) * x0, "score": -eps / b(s)}
    for kind in PREDICTIONS:
        out = prediction_from_eps(kind, eps, x, m, s)
        torch.testing.assert_close(out, truth[kind], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(eps_from_prediction(kind, out, x, m, s), eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_v_maps_agree_with_each_other(case):
    x0, eps, m, s, x = draw(case)
    v = convert.v_from_eps(x, eps, m, s)
    torch.testing.assert_close(convert.x0_from_v(x, v, m, s), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(convert.eps_from_v(x, v, m, s), eps, rtol=1e-12, atol=1e-12)


def test_the_v_sign_is_m_eps_minus_sigma_x0():
    # x_0 = 0: v = m·ε, positive along ε; the wrong sign (σ·x_0 − m·ε) would flip it
    m, s, eps = 0.6, 0.8, torch.ones(1, 3, dtype=torch.float64)
    x = s * eps
    assert torch.allclose(convert.v_from_eps(x, eps, m, s), m * eps)
    # ε = 0: v = −σ·x_0
    x0 = torch.ones(1, 3, dtype=torch.float64)
    assert torch.allclose(convert.v_from_eps(m * x0, torch.zeros_like(x0), m, s), -s * x0)


def test_an_unknown_prediction_names_the_choices():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="prediction must be one of 'epsilon', 'x0', 'v', 'score', got 'sample'"):
        eps_from_prediction("sample", x, x, 1.0, 1.0)
    with pytest.raises(ValueError, match="got 'v_prediction'"):
        prediction_from_eps("v_prediction", x, x, 1.0, 1.0)

"""The quality metrics separate exact samples from distorted ones."""
import math

import pytest
import torch
from scipy.stats import chi2

from conftest import gen
from scoresde.evaluation.metrics import mode_metrics, quality, sliced_w2
from scoresde.oracle import GaussianMixture


def test_exact_samples_score_near_ideal(device):
    data = GaussianMixture.ring()
    q = quality(data.sample(4000, generator=gen(0), device=device), data)
    assert abs(q["std_ratio"] - 1) < 0.02 and q["off_mode"] == 0 and q["mode_tv"] < 0.04
    assert q["mode_w2"] < 0.05 and q["sw2"] < 2 * q["sw2_floor"]


def test_distortions_are_seen():
    data = GaussianMixture.ring()
    x = data.sample(4000, generator=gen(1), dtype=torch.float64)
    centre = data.means[torch.cdist(x, data.means).argmin(1)]
    wide = centre + 1.1 * (x - centre)
    q = mode_metrics(wide, data)
    assert abs(q["std_ratio"] - 1.1) < 0.02 and q["mode_w2"] > 0.08
    # same std, wrong shape: residuals pushed onto a circle of the right rms radius
    r = x - centre
    ring_shaped = centre + r / r.norm(dim=1, keepdim=True) * 0.2 * 2 ** 0.5
    q = mode_metrics(ring_shaped, data)
    assert abs(q["std_ratio"] - 1) < 0.01 and q["mode_w2"] > 0.1
    one_mode = data.means[0] + 0.2 * torch.randn(4000, 2, generator=gen(2), dtype=torch.float64)
    assert mode_metrics(one_mode, data)["mode_tv"] > 0.8
    far = torch.full((10, 2), 100.0, dtype=torch.float64)
    assert mode_metrics(far, data)["off_mode"] == 1.0


def test_sliced_w2_of_a_shift():
    x = torch.randn(5000, 3, generator=gen(3), dtype=torch.float64)
    shift = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    # projected onto unit θ the shift is θ₁·3; E θ₁² = 1/3, so SW2 ≈ √3
    assert abs(sliced_w2(x + shift, x, n_proj=2000, generator=gen(4)) - 3 ** 0.5) < 0.1


def test_off_mode_threshold_scales_with_dimension():
    assert chi2.isf(math.exp(-12.5), 2) == pytest.approx(25.0)  # 2-D keeps "beyond 5 std"
    data = GaussianMixture.gaussian(64)
    q = mode_metrics(data.sample(2000, generator=gen(5)), data)
    assert q["off_mode"] == 0 and abs(q["std_ratio"] - 1) < 0.01 and q["mode_w2"] < 0.06


def test_nfe_tick_labels_keep_the_round_counts_and_never_crowd():
    from scoresde.evaluation.plots import tick_labels

    ticks = [5, 9, 10, 19, 20, 39, 50, 99, 100, 121, 999, 1000]
    shown = tick_labels(ticks)
    assert {5, 10, 20, 50, 100, 1000} <= shown  # 50 is kept although 39 comes first on the axis
    kept = sorted(shown)
    assert all(b >= 1.3 * a for a, b in zip(kept, kept[1:]))

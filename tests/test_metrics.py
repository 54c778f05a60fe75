"""Each metric on small inputs checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from saecli import metrics


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_l0_norm_counts_active():
    f = t([0.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0])
    assert metrics.l0_norm(f > 0).tolist() == [2, 0]


def test_reconstruction_error_is_euclidean_norm():
    assert metrics.reconstruction_error(t([3.0, 0.0]), t([0.0, 4.0])).item() == pytest.approx(5.0)


def test_gini_hand_computed():
    # m ascending = [1, 2, 3], n = 3: 2·(1·1 + 2·2 + 3·3)/(3·6) − 4/3 = 28/18 − 24/18 = 2/9
    values = t([3.0, 2.0, 1.0, 0.0])
    assert metrics.gini(values, values > 0).item() == pytest.approx(2 / 9)


def test_gini_equal_values_is_zero_and_empty_is_zero():
    values = t([2.0, 2.0, 2.0], [0.0, 0.0, 0.0])
    assert metrics.gini(values, values > 0).tolist() == pytest.approx([0.0, 0.0])


def test_gini_single_active_is_zero():
    values = t([5.0, 0.0])
    assert metrics.gini(values, values > 0).item() == pytest.approx(0.0)


def test_sphericity_and_axes():
    lam = t([4.0, 1.0, 1.0])
    assert metrics.sphericity(lam, torch.tensor([3])).item() == pytest.approx(0.5)
    assert metrics.sphericity(lam, torch.tensor([0])).item() == 0.0


def test_axes_floor_of_a():
    a, b, c = metrics.ellipsoid_axes(t([0.0, 0.0, 0.0]))
    assert a.item() == pytest.approx(math.sqrt(1e-9)) and b.item() == 0.0 and c.item() == 0.0


@pytest.mark.parametrize(
    "lam, n_active, expected",
    [
        ([1.0, 0.9, 0.85], 5, "Spherical"),  # b/a ≈ .95, c/a ≈ .92
        ([1.0, 0.81, 0.25], 5, "Oblate"),  # b/a = .9, c/a = .5
        ([1.0, 0.25, 0.16], 5, "Prolate"),  # b/a = .5, c/a = .4
        ([1.0, 0.49, 0.49], 5, "Triaxial"),  # b/a = .7, c/a = .7
        ([0.0, 0.0, 0.0], 1, "Prolate"),  # one feature: a = √1e-9, b = c = 0
        ([0.0, 0.0, 0.0], 0, None),
    ],
)
def test_shape_class(lam, n_active, expected):
    assert metrics.shape_class(t(lam), torch.tensor([n_active])) == [expected]


def test_dimensionality_participation_ratio():
    assert metrics.dimensionality(t([1.0, 1.0, 1.0, 0.0])).item() == pytest.approx(3.0)
    assert metrics.dimensionality(t([2.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    assert metrics.dimensionality(t([0.0, 0.0, 0.0])).item() == 0.0


def test_angle_degrees():
    assert metrics.angle_degrees(t([1.0, 0.0]), t([0.0, 2.0])).item() == pytest.approx(90.0)
    assert metrics.angle_degrees(t([1.0, 0.0]), t([-1.0, 0.0])).item() == pytest.approx(180.0)
    assert metrics.angle_degrees(t([0.0, 0.0]), t([1.0, 0.0])).item() == 0.0


def test_line_angle_ignores_sign():
    assert metrics.line_angle_degrees(t([1.0, 0.0]), t([-1.0, 0.0])).item() == pytest.approx(0.0)
    assert metrics.line_angle_degrees(t([1.0, 0.0]), t([-1.0, 1.0])).item() == pytest.approx(45.0)
    assert metrics.line_angle_degrees(t([1.0, 0.0]), t([0.0, 0.0])).item() == 0.0


def test_cosine_similarity_zero_vector():
    assert metrics.cosine_similarity(t([1.0, 1.0]), t([2.0, 2.0])).item() == pytest.approx(1.0)
    assert metrics.cosine_similarity(t([0.0, 0.0]), t([2.0, 2.0])).item() == 0.0


def test_top_indices_and_jaccard():
    values = t([5.0, 4.0, 3.0, 0.0])
    indices = torch.tensor([[7, 2, 9, 1]])
    top = metrics.top_indices(indices, values > 0, k=10)
    assert top.tolist() == [[7, 2, 9] + [-1] * 7]
    other = torch.tensor([[2, 9, 4] + [-1] * 7])
    assert metrics.jaccard(top, other).item() == pytest.approx(2 / 4)
    empty = torch.full((1, 10), -1)
    assert metrics.jaccard(empty, empty).item() == 1.0
    assert metrics.jaccard(top, empty).item() == 0.0


def test_entropy_uniform_and_empty():
    values = t([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0])
    assert metrics.entropy(values, values > 0).tolist() == pytest.approx([math.log(4), 0.0])


def test_entropy_uses_only_top_k():
    values = t([2.0, 1.0, 1.0])
    p = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    assert metrics.entropy(values, values > 0, k=2).item() == pytest.approx(-(p * p.log()).sum().item())

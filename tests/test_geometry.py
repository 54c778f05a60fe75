"""The Gram-matrix eigen solution equals the direct d_model × d_model one (float64, ≤ 1e-9)."""

from __future__ import annotations

import pytest
import torch

from saecli import geometry, metrics


def _case(n_active: int, d: int = 24, k: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    positions = torch.randn(1, k, d, generator=g, dtype=torch.float64)
    values = torch.zeros(1, k, dtype=torch.float64)
    values[0, :n_active] = torch.rand(n_active, generator=g, dtype=torch.float64) + 0.1
    mask = values > 0
    return positions, geometry.masses(values, mask), mask.sum(-1)


@pytest.mark.parametrize("n_active", [0, 1, 2, 3, 5, 8])
def test_gram_equals_direct(n_active):
    positions, w, n = _case(n_active)
    fast = geometry.inertia_gram(positions, w, n)
    slow = geometry.inertia_direct(positions, w, n)
    assert torch.allclose(fast.eigenvalues[:, :3], slow.eigenvalues[:, :3], atol=1e-9, rtol=0)
    assert torch.allclose(fast.centroid, slow.centroid, atol=1e-12, rtol=0)
    for fn in (metrics.sphericity,):
        assert abs(fn(fast.eigenvalues, n).item() - fn(slow.eigenvalues, n).item()) <= 1e-9
    assert abs(metrics.dimensionality(fast.eigenvalues).item() - metrics.dimensionality(slow.eigenvalues).item()) <= 1e-9
    assert metrics.shape_class(fast.eigenvalues, n) == metrics.shape_class(slow.eigenvalues, n)
    # The axis is a line: compare up to sign.
    assert abs(abs((fast.axis * slow.axis).sum().item()) - (1.0 if n_active >= 2 else 0.0)) <= 1e-9


def test_degenerate_cases_exact():
    for n_active in (0, 1):
        positions, w, n = _case(n_active)
        inertia = geometry.inertia_gram(positions, w, n)
        assert inertia.eigenvalues.abs().max().item() == 0.0
        assert inertia.axis.abs().max().item() == 0.0
    positions, w, n = _case(0)
    assert geometry.inertia_gram(positions, w, n).centroid.abs().max().item() == 0.0
    # Two features: the covariance has rank 1, so λ2 and λ3 are exactly zero.
    positions, w, n = _case(2)
    lam = geometry.inertia_gram(positions, w, n).eigenvalues
    assert lam[0, 0] > 0 and lam[0, 1].item() == 0.0 and lam[0, 2].item() == 0.0


def test_two_features_by_hand():
    # Masses ½, ½ at ±e1: centroid 0, C = e1 e1ᵀ, λ1 = 1, u1 = ±e1.
    positions = torch.tensor([[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]], dtype=torch.float64)
    w = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    inertia = geometry.inertia_gram(positions, w, torch.tensor([2]))
    assert inertia.eigenvalues[0, 0].item() == pytest.approx(1.0)
    assert inertia.centroid.abs().max().item() == 0.0
    assert abs(inertia.axis[0, 0].item()) == pytest.approx(1.0)


def test_batched_padding_does_not_change_rows():
    rows = [_case(n, seed=n) for n in (1, 3, 8)]
    positions = torch.cat([r[0] for r in rows])
    w = torch.cat([r[1] for r in rows])
    n = torch.cat([r[2] for r in rows])
    together = geometry.inertia_gram(positions, w, n)
    for i, (p, wi, ni) in enumerate(rows):
        alone = geometry.inertia_gram(p[:, : max(int(ni), 1)], wi[:, : max(int(ni), 1)], ni)
        assert torch.allclose(together.eigenvalues[i, :3], alone.eigenvalues[0, :3], atol=1e-12)


def test_masses_sum_to_one():
    values = torch.tensor([[3.0, 1.0, 0.0]], dtype=torch.float64)
    w = geometry.masses(values, values > 0)
    assert w.tolist() == [[0.75, 0.25, 0.0]]

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


@pytest.mark.parametrize("seed", range(5))
def test_top_eigenvector_matches_eigh(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(6, 9, 30, generator=g, dtype=torch.float64)
    gram = y @ y.transpose(-1, -2)
    evals, evecs = torch.linalg.eigh(gram)
    v = geometry.top_eigenvector(gram, evals[..., -1])
    # Unit vectors on the same line as eigh's (the sign is free).
    assert torch.allclose((v * evecs[..., -1]).sum(-1).abs(), torch.ones(6, dtype=torch.float64), atol=1e-12, rtol=0)


def test_axis_with_padding_equals_axis_alone():
    rows = [_case(n, seed=10 + n) for n in (2, 3, 5, 8)]
    positions, w, n = (torch.cat([r[i] for r in rows]) for i in range(3))
    together = geometry.inertia_gram(positions, w, n)
    for i, (p, wi, ni) in enumerate(rows):
        alone = geometry.inertia_gram(p[:, : int(ni)], wi[:, : int(ni)], ni)
        assert abs(abs((together.axis[i] * alone.axis[0]).sum().item()) - 1.0) <= 1e-12


def test_degenerate_top_eigenspace_gives_the_same_axis_padded_or_not():
    # Three unit vectors at 120° with equal masses: λ1 = λ2, so any line of that plane is an axis;
    # the batched (padded) and sequential (unpadded) rows must still pick the same one.
    angles = torch.arange(3, dtype=torch.float64) * (2 * torch.pi / 3)
    triangle = torch.stack([angles.cos(), angles.sin(), torch.zeros(3, dtype=torch.float64)], -1)
    padded = torch.cat([triangle, torch.zeros(4, 3, dtype=torch.float64)]).unsqueeze(0)
    w_alone = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    w_padded = torch.nn.functional.pad(w_alone, (0, 4))
    n = torch.tensor([3])
    alone = geometry.inertia_gram(triangle.unsqueeze(0), w_alone, n)
    together = geometry.inertia_gram(padded, w_padded, n)
    assert alone.eigenvalues[0, 0].item() == pytest.approx(alone.eigenvalues[0, 1].item(), rel=1e-12)
    assert abs(abs((alone.axis * together.axis).sum().item()) - 1.0) <= 1e-9


def test_top_eigenvector_falls_back_to_eigh_when_the_shift_is_too_small():
    # σ below λ1 makes σI − G indefinite: the Cholesky factorisation fails and eigh answers.
    y = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gram = y @ y.transpose(-1, -2)
    evals, evecs = torch.linalg.eigh(gram)
    v = geometry.top_eigenvector(gram, evals[..., -1] * 0.5)
    assert torch.allclose((v * evecs[..., -1]).sum(-1).abs(), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)

"""Geometry of the active decoder directions: the inertia tensor, solved through its Gram matrix.

For one activation with active features i (``f_i > 0``): masses ``w_i = f_i / Σ f``, positions
``r_i = W_dec[i]``, centroid ``c = Σ w_i r_i`` and covariance ``C = Σ w_i (r_i − c)(r_i − c)ᵀ``.
With ``Y = W^½ (R − c)`` (k × d_model), ``C = Yᵀ Y`` while the Gram matrix ``G = Y Yᵀ`` is only
k × k and has the same non-zero eigenvalues; ``C``'s top eigenvector is ``Yᵀ v1 / ‖Yᵀ v1‖``.

Exact zeros: ``Σ w_i (r_i − c) = 0``, so ``rank C ≤ min(k − 1, d_model)``. Eigenvalues beyond that
rank are zero in exact arithmetic; they are set to exactly 0 rather than left as rounding noise
(whose square root would otherwise leak ~1e-8 into ``b`` and ``c``). Everything runs in float64.

Functions are batched over a leading dimension ``n`` whose rows are padded to a common ``k``:
padded slots carry zero mass, which adds only zero rows and columns to ``G``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Inertia:
    """The inertia ellipsoid of each row (all float64)."""

    eigenvalues: torch.Tensor
    """[n, m] eigenvalues of C, descending, m = max(k, 3); beyond the rank exactly 0."""
    centroid: torch.Tensor
    """[n, d_model] ``c = Σ w_i r_i``; zero when nothing is active."""
    axis: torch.Tensor | None
    """[n, d_model] unit principal axis u1; zero when fewer than two features are active."""


def masses(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``w_i = f_i / Σ_active f`` over the active slots (0 elsewhere; all 0 when none is active)."""
    v = torch.where(mask, values.to(torch.float64), torch.zeros((), dtype=torch.float64, device=values.device))
    total = v.sum(-1, keepdim=True)
    return torch.where(total > 0, v / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(v))


def _rank_limit(n_active: torch.Tensor, d_model: int) -> torch.Tensor:
    return torch.clamp(torch.minimum(n_active - 1, torch.full_like(n_active, d_model)), min=0)


def _pad_to_three(eigenvalues: torch.Tensor) -> torch.Tensor:
    missing = 3 - eigenvalues.shape[-1]
    if missing > 0:
        eigenvalues = torch.nn.functional.pad(eigenvalues, (0, missing))
    return eigenvalues


def top_eigenvector(gram: torch.Tensor, largest: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """The unit eigenvector of each symmetric ``gram`` [n, k, k] for its largest eigenvalue
    ``largest`` [n], by inverse iteration: ``v ← (σI − G)⁻¹ v / ‖·‖`` with ``σ = λ1 (1 + 1e-10)``,
    from ``v_i = 1 / i`` (i = 1..k). ``σI − G`` is positive definite, so one Cholesky factorisation
    serves every step (far cheaper than a full ``eigh``). Each step shrinks every other
    eigen-component by ``(σ − λ1) / (σ − λj)`` (≤ ~1e-10 unless ``λj`` is within ~1e-10 of ``λ1``,
    where the axis is not defined anyway), so three steps reach rounding. Rows with ``λ1 ≤ 0``
    (nothing spread out) get an arbitrary unit vector, which the caller zeroes; a row whose
    factorisation fails (rounding) takes ``eigh``'s vector instead."""
    n, k, _ = gram.shape
    positive = largest > 0
    shift = torch.where(positive, largest * (1 + 1e-10), torch.ones_like(largest))
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    system = torch.where(positive[:, None, None], shift[:, None, None] * eye - gram, eye.expand(n, k, k))
    factor, info = torch.linalg.cholesky_ex(system)
    # The start depends on the slot alone, not on k: padded and unpadded rows then converge to the
    # same vector, even inside a degenerate top eigenspace (where any unit vector of it is an axis).
    # (torch's batched LU is not used: with 2 threads on MKL it returned invalid pivots here.)
    v = (1.0 / torch.arange(1, k + 1, dtype=gram.dtype, device=gram.device)).repeat(n, 1).unsqueeze(-1)
    for _ in range(steps):
        v = torch.cholesky_solve(v, factor)
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
    v = v.squeeze(-1)
    failed = info != 0
    if bool(failed.any()):
        v[failed] = torch.linalg.eigh(gram[failed]).eigenvectors[..., -1]
    return v


def inertia_gram(positions: torch.Tensor, weights: torch.Tensor, n_active: torch.Tensor, *, need_axis: bool = True) -> Inertia:
    """Inertia through the k × k Gram matrix (the fast path the engine uses).

    positions: [n, k, d] decoder rows of the (padded) active features; weights: [n, k] masses
    (0 on padding); n_active: [n] number of active features per row.
    """
    positions = positions.to(torch.float64)
    weights = weights.to(torch.float64)
    n, k, d = positions.shape
    centroid = torch.einsum("nk,nkd->nd", weights, positions)
    y = weights.sqrt().unsqueeze(-1) * (positions - centroid.unsqueeze(1))
    gram = y @ y.transpose(-1, -2)
    if k == 0:
        eigenvalues = torch.zeros(n, 3, dtype=torch.float64, device=positions.device)
        axis = torch.zeros(n, d, dtype=torch.float64, device=positions.device) if need_axis else None
        return Inertia(eigenvalues, centroid, axis)
    evals = torch.linalg.eigvalsh(gram)
    top = top_eigenvector(gram, evals[..., -1]) if need_axis else None
    evals = evals.flip(-1)
    rank = _rank_limit(n_active, d)
    slot = torch.arange(k, device=positions.device).expand(n, k)
    evals = torch.where(slot < rank.unsqueeze(-1), evals, torch.zeros_like(evals))
    axis = None
    if need_axis:
        direction = torch.einsum("nkd,nk->nd", y, top)
        norm = direction.norm(dim=-1, keepdim=True)
        ok = (n_active >= 2).unsqueeze(-1) & (norm > 0)
        axis = torch.where(ok, direction / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(direction))
    return Inertia(_pad_to_three(evals), centroid, axis)


def inertia_direct(positions: torch.Tensor, weights: torch.Tensor, n_active: torch.Tensor) -> Inertia:
    """Reference: the d_model × d_model covariance and its eigen-decomposition (slow; for tests and
    the research-algorithm baseline). Same rank rule as :func:`inertia_gram`."""
    positions = positions.to(torch.float64)
    weights = weights.to(torch.float64)
    n, k, d = positions.shape
    centroid = torch.einsum("nk,nkd->nd", weights, positions)
    centred = positions - centroid.unsqueeze(1)
    cov = torch.einsum("nk,nki,nkj->nij", weights, centred, centred)
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    rank = _rank_limit(n_active, d)
    slot = torch.arange(d, device=positions.device).expand(n, d)
    evals = torch.where(slot < rank.unsqueeze(-1), evals, torch.zeros_like(evals))
    axis = torch.where((n_active >= 2).unsqueeze(-1), evecs[..., 0], torch.zeros_like(evecs[..., 0]))
    return Inertia(_pad_to_three(evals), centroid, axis)

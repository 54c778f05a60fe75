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


def inertia_gram(
    positions: torch.Tensor, weights: torch.Tensor, n_active: torch.Tensor, *, need_axis: bool = True
) -> Inertia:
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
    if need_axis:
        evals, evecs = torch.linalg.eigh(gram)
    else:
        evals, evecs = torch.linalg.eigvalsh(gram), None
    evals = evals.flip(-1)
    rank = _rank_limit(n_active, d)
    slot = torch.arange(k, device=positions.device).expand(n, k)
    evals = torch.where(slot < rank.unsqueeze(-1), evals, torch.zeros_like(evals))
    axis = None
    if need_axis:
        top = evecs[..., -1]
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

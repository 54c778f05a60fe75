"""The per-sample metrics of ``shared/spec/metrics.md``, each defined once as a pure function.

Every function is batched over a leading dimension (one row per activation or per sample) and
works the same for one row (the sequential reference) as for many (the batched engine). Feature
activations arrive as the active values sorted descending, padded to a common width ``k``, with a
boolean mask of the active (``f > 0``) slots: ``values`` [n, k], ``indices`` [n, k], ``mask`` [n, k].
"""

from __future__ import annotations

import torch

from saecli.columns import SHAPE_CLASSES

TOP_STABILITY = 10
TOP_ENTROPY = 50


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)


def l0_norm(mask: torch.Tensor) -> torch.Tensor:
    """Number of active features: ``Σ [f_i > 0]``."""
    return mask.sum(-1)


def reconstruction_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``‖x − x̂‖₂``, computed in float64."""
    return torch.linalg.vector_norm(_f64(x) - _f64(x_hat), dim=-1)


def gini(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gini of the n active magnitudes sorted ascending: ``2·Σ i·m_(i) / (n·Σ m) − (n+1)/n``,
    i = 1..n; 0 when n = 0. ``values`` are sorted descending, so slot j holds rank ``i = n − j``."""
    v = torch.where(mask, _f64(values), torch.zeros((), dtype=torch.float64, device=values.device))
    n = mask.sum(-1).to(torch.float64)
    slot = torch.arange(v.shape[-1], device=v.device, dtype=torch.float64)
    rank = torch.clamp(n.unsqueeze(-1) - slot, min=0)
    total = v.sum(-1)
    safe = (n > 0) & (total > 0)
    g = 2 * (rank * v).sum(-1) / torch.where(safe, n * total, torch.ones_like(total)) - (n + 1) / torch.where(
        safe, n, torch.ones_like(n)
    )
    return torch.where(safe, g, torch.zeros_like(g))


def ellipsoid_axes(eigenvalues: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Semi-axes ``a = √max(λ1, 1e-9)``, ``b = √max(λ2, 0)``, ``c = √max(λ3, 0)`` (eigenvalues descending)."""
    lam = _f64(eigenvalues)
    a = torch.sqrt(torch.clamp(lam[..., 0], min=1e-9))
    b = torch.sqrt(torch.clamp(lam[..., 1], min=0.0))
    c = torch.sqrt(torch.clamp(lam[..., 2], min=0.0))
    return a, b, c


def sphericity(eigenvalues: torch.Tensor, n_active: torch.Tensor) -> torch.Tensor:
    """``c / a`` of the inertia ellipsoid; 0 when nothing is active."""
    a, _, c = ellipsoid_axes(eigenvalues)
    return torch.where(n_active > 0, c / a, torch.zeros_like(a))


def shape_class(eigenvalues: torch.Tensor, n_active: torch.Tensor) -> list[str | None]:
    """``Spherical`` if b/a > 0.9 and c/a > 0.9; else ``Oblate`` if b/a > 0.8 and c/a < 0.6; else
    ``Prolate`` if b/a < 0.6 and c/a < 0.6; else ``Triaxial``; None when nothing is active."""
    spherical, oblate, prolate, triaxial = SHAPE_CLASSES
    a, b, c = ellipsoid_axes(eigenvalues)
    ba, ca = (b / a).tolist(), (c / a).tolist()
    out: list[str | None] = []
    for active, r_b, r_c in zip(n_active.tolist(), ba, ca, strict=False):
        if active == 0:
            out.append(None)
        elif r_b > 0.9 and r_c > 0.9:
            out.append(spherical)
        elif r_b > 0.8 and r_c < 0.6:
            out.append(oblate)
        elif r_b < 0.6 and r_c < 0.6:
            out.append(prolate)
        else:
            out.append(triaxial)
    return out


def dimensionality(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Participation ratio ``(Σλ)² / (Σλ² + 1e-9)`` over all eigenvalues."""
    lam = _f64(eigenvalues)
    return lam.sum(-1) ** 2 / ((lam**2).sum(-1) + 1e-9)


def _cosine(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, v = _f64(u), _f64(v)
    nu, nv = torch.linalg.vector_norm(u, dim=-1), torch.linalg.vector_norm(v, dim=-1)
    nonzero = (nu > 0) & (nv > 0)
    denom = torch.where(nonzero, nu * nv, torch.ones_like(nu))
    return (u * v).sum(-1) / denom, nonzero


def angle_degrees(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angle between two vectors: ``degrees(arccos(clip(cos, −1, 1)))``; 0 if either is zero."""
    cos, nonzero = _cosine(u, v)
    angle = torch.rad2deg(torch.arccos(torch.clamp(cos, -1.0, 1.0)))
    return torch.where(nonzero, angle, torch.zeros_like(angle))


def line_angle_degrees(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Angle between two lines (sign-free axes): ``degrees(arccos(clip(|cos|, 0, 1)))``; 0 if either is zero."""
    cos, nonzero = _cosine(u, v)
    angle = torch.rad2deg(torch.arccos(torch.clamp(cos.abs(), 0.0, 1.0)))
    return torch.where(nonzero, angle, torch.zeros_like(angle))


def cosine_similarity(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u·v / (‖u‖‖v‖)``; 0 if either is zero."""
    cos, nonzero = _cosine(u, v)
    return torch.where(nonzero, cos, torch.zeros_like(cos))


def top_indices(indices: torch.Tensor, mask: torch.Tensor, k: int = TOP_STABILITY) -> torch.Tensor:
    """Indices of the k largest values of f that are > 0, as [n, k] with −1 for missing slots
    (``indices`` sorted by value descending)."""
    width = indices.shape[-1]
    idx = torch.where(mask, indices, torch.full_like(indices, -1))[..., :k]
    if width < k:
        idx = torch.nn.functional.pad(idx, (0, k - width), value=-1)
    return idx


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|A ∩ B| / |A ∪ B|`` of index sets given as [n, k] rows with −1 for missing; 1.0 when both
    are empty."""
    valid_a, valid_b = a >= 0, b >= 0
    inter = ((a.unsqueeze(-1) == b.unsqueeze(-2)) & valid_a.unsqueeze(-1) & valid_b.unsqueeze(-2)).sum((-1, -2))
    union = valid_a.sum(-1) + valid_b.sum(-1) - inter
    ratio = inter.to(torch.float64) / torch.where(union > 0, union, torch.ones_like(union)).to(torch.float64)
    return torch.where(union > 0, ratio, torch.ones_like(ratio))


def entropy(values: torch.Tensor, mask: torch.Tensor, k: int = TOP_ENTROPY) -> torch.Tensor:
    """Entropy of the k largest active values normalised to p: ``−Σ p ln p``; 0 when none is active."""
    v = torch.where(mask, _f64(values), torch.zeros((), dtype=torch.float64, device=values.device))[..., :k]
    total = v.sum(-1, keepdim=True)
    p = v / torch.where(total > 0, total, torch.ones_like(total))
    terms = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    return -terms.sum(-1)

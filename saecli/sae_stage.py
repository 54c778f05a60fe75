"""One layer's SAE and geometry over a stack of residual reads: encode, reconstruct, the Gram-matrix
inertia of the active decoder rows, and the per-read metrics (plus the stability noise's encode on
the first layer).

Belongs here: the SAE work of a layer and the metric values per read (:class:`LayerOut`), the
seeded stability noise, and the work counts FLOPs are computed from (reads encoded, decoder rows
multiplied), returned with each layer's outputs. Does not belong here: the forward passes
(:mod:`saecli.forward`), pairing reads into a sample's columns (:mod:`saecli.rows`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from saecli import geometry, metrics
from saecli.columns import KINDS
from saecli.device import torch_dtype
from saecli.models import LoadedPreset

Timer = Callable[[str], AbstractContextManager[Any]]
"""Times a stage: ``with timer("sae"): ...`` (:class:`saecli.timer.StageTimer`)."""

GEOMETRY_CHUNK = 8
"""Rows per call of the geometry, after sorting a layer's reads by their number of active features."""


def _decodes_linearly(sae: Any) -> bool:
    """Whether ``sae.decode(f)`` is ``f @ W_dec + b_dec`` through identity hooks (SAELens's standard
    and JumpReLU SAEs without activation normalisation or hook_z reshaping): then the reconstruction
    is summed over the active features alone, from the decoder rows the geometry gathers anyway,
    instead of a product with all d_sae rows. Any other SAE is decoded by its own ``decode``."""
    from sae_lens import JumpReLUSAE, StandardSAE

    decode = getattr(type(sae), "decode", None)
    hook = getattr(sae.cfg.metadata, "hook_name", None) or ""
    return (
        decode in (StandardSAE.decode, JumpReLUSAE.decode)
        and getattr(sae.cfg, "normalize_activations", "none") in ("none", None)
        and not hook.endswith("_z")
    )


def noise_vector(seed: int, sample_id: str, kind: str, d_model: int) -> torch.Tensor:
    """ε ~ N(0, I) in float64 from a generator seeded by (seed, sample id, text kind), so a
    sample's noise never depends on batch size, order or worker."""
    digest = hashlib.sha256(f"{seed}\x1f{sample_id}\x1f{kind}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randn(d_model, generator=generator, dtype=torch.float64)


def stability_noise(seed: int, sample_ids: Sequence[str], d_model: int, device: torch.device) -> torch.Tensor:
    """Noise for the first layer's reads [F.., H..] (the prompt's reads get none: stability is of F and H)."""
    return torch.stack([noise_vector(seed, sid, kind, d_model) for kind in KINDS for sid in sample_ids]).to(device)


@dataclass
class LayerOut:
    """What one layer's SAE and geometry give for a stack of activations (tensors, n-leading)."""

    l0: torch.Tensor
    reconstruction_error: torch.Tensor
    gini: torch.Tensor
    sphericity: torch.Tensor
    shape_class: list[str | None]
    dimensionality: torch.Tensor
    x_hat: torch.Tensor
    active: list[tuple[Any, Any]] | None = None
    """Per read, its active features' (indices, values) as numpy arrays (kept for the residuals file)."""
    centroid: torch.Tensor | None = None
    axis: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    top: torch.Tensor | None = None
    top_noisy: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list[LayerOut]) -> LayerOut:
        merged = {}
        for name in LayerOut.__dataclass_fields__:
            values = [getattr(p, name) for p in parts]
            if values[0] is None:
                merged[name] = None
            elif isinstance(values[0], list):
                merged[name] = [v for part in values for v in part]
            else:
                merged[name] = torch.cat(values)
        return LayerOut(**merged)


SaeWork = tuple[int, int]
"""A layer's SAE work: (reads encoded, decoder rows multiplied); see ``BatchResult.sae_rows``."""


@dataclass
class _Encoded:
    """A stack of reads through the SAE: the top-``width`` features of each read (``width``: the
    most active features of any read), the dense reconstruction when the SAE decodes itself, and
    the noisy reads' features."""

    l0: torch.Tensor
    values: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor
    d_sae: int
    x_hat: torch.Tensor | None
    f_noisy: torch.Tensor | None


@dataclass
class _Inertia:
    """The geometry of every read, per chunk (``inverse`` puts the chunks' reads back in the reads'
    order), and the reconstruction summed over the active decoder rows (None when the SAE decodes itself)."""

    eigenvalues: list[torch.Tensor]
    """Per chunk, its reads' eigenvalues (padded to the chunk's widest read)."""
    centroid: list[torch.Tensor]
    axis: list[torch.Tensor]
    inverse: torch.Tensor
    x_hat: torch.Tensor | None
    decoder_rows: int


class SaeStage:
    """The SAE and geometry of each of a preset's layers, on reads gathered by the forward pass."""

    def __init__(self, loaded: LoadedPreset, *, noise_std: float, keep_active: bool, timer: Timer):
        self.saes = loaded.saes
        self.sae_dtype = torch_dtype(loaded.sae_dtype)
        self.noise_std = noise_std
        self.keep_active = keep_active
        """Keep each read's active features (for the residuals file, with baselines on)."""
        self.timer = timer

    def layer(self, layer: int, x: torch.Tensor, *, first: bool, noise: torch.Tensor | None) -> tuple[LayerOut, SaeWork]:
        """The layer's outputs for reads ``x`` [n, d], and its SAE work. The first layer also gives
        the centroid, axis, entropy and top features of each read; ``noise`` perturbs the last
        ``len(noise)`` reads (the F and H reads) for the stability's second encode."""
        sae = self.saes[layer]
        x = x.to(self.sae_dtype)
        noisy = 0 if noise is None else len(noise)
        sparse = _decodes_linearly(sae)
        enc = self._encode(sae, x, noise, sparse=sparse)
        inertia = self._inertia(sae, enc, first=first, sparse=sparse)
        work = (len(x) + noisy, inertia.decoder_rows if sparse else len(x) * enc.d_sae)
        x_hat = inertia.x_hat if sparse else enc.x_hat
        with self.timer("metrics"):
            out = self._metrics(x, x_hat, enc, inertia, first=first, noisy=noisy)
        return out, work

    def _encode(self, sae: Any, x: torch.Tensor, noise: torch.Tensor | None, *, sparse: bool) -> _Encoded:
        noisy = 0 if noise is None else len(noise)
        with self.timer("sae"):
            f = sae.encode(x)
            x_hat = None if sparse else sae.decode(f)
            l0 = metrics.l0_norm(f > 0)
            width = max(int(l0.max()), 1)
            values, indices = f.topk(width, dim=-1)
            mask = values > 0
            f_noisy = sae.encode(x[len(x) - noisy :] + self.noise_std * noise.to(x)) if noise is not None else None
        return _Encoded(l0, values, indices, mask, int(f.shape[-1]), x_hat, f_noisy)

    def _inertia(self, sae: Any, enc: _Encoded, *, first: bool, sparse: bool) -> _Inertia:
        """The geometry in chunks of reads sorted by their number of active features, so each
        chunk's Gram matrices are padded only to its own widest read: the eigen-decomposition
        costs k³ per read. The decoder rows it gathers also sum the reconstruction."""
        eigenvalues, centroid, axis, parts = [], [], [], []
        decoder_rows = 0  # decoder rows multiplied: the gathered (padded) active ones
        l0 = enc.l0
        order = torch.sort(l0, stable=True).indices
        for chunk in order.split(GEOMETRY_CHUNK):
            k = max(int(l0[chunk].max()), 1)
            v, m = enc.values[chunk, :k], enc.mask[chunk, :k]
            decoder_rows += len(chunk) * k
            with self.timer("sae"):
                positions = sae.W_dec[enc.indices[chunk, :k]]
                if sparse:
                    parts.append(torch.einsum("nk,nkd->nd", torch.where(m, v, torch.zeros_like(v)), positions) + sae.b_dec)
            with self.timer("geometry"):
                inertia = geometry.inertia_gram(positions, geometry.masses(v, m), l0[chunk], need_axis=first)
            eigenvalues.append(inertia.eigenvalues)
            centroid.append(inertia.centroid)
            axis.append(inertia.axis)
        inverse = torch.argsort(order)
        x_hat = None
        with self.timer("sae"):
            if sparse:
                x_hat = sae.hook_sae_recons(torch.cat(parts)[inverse])
        return _Inertia(eigenvalues, centroid, axis, inverse, x_hat, decoder_rows)

    def _metrics(
        self, x: torch.Tensor, x_hat: torch.Tensor, enc: _Encoded, inertia: _Inertia, *, first: bool, noisy: int
    ) -> LayerOut:
        l0, values, mask = enc.l0, enc.values, enc.mask
        span = max(e.shape[-1] for e in inertia.eigenvalues)
        lam = torch.cat([torch.nn.functional.pad(e, (0, span - e.shape[-1])) for e in inertia.eigenvalues])[inertia.inverse]
        out = LayerOut(
            l0=l0,
            reconstruction_error=metrics.reconstruction_error(x, x_hat),
            gini=metrics.gini(values, mask),
            sphericity=metrics.sphericity(lam, l0),
            shape_class=metrics.shape_class(lam, l0),
            dimensionality=metrics.dimensionality(lam),
            x_hat=x_hat,
        )
        if self.keep_active:
            kept_values, kept_indices, kept_mask = values.float().cpu().numpy(), enc.indices.cpu().numpy(), mask.cpu().numpy()
            out.active = [(kept_indices[r][kept_mask[r]], kept_values[r][kept_mask[r]]) for r in range(len(x))]
        if first:
            out.centroid, out.axis = torch.cat(inertia.centroid)[inertia.inverse], torch.cat(inertia.axis)[inertia.inverse]
            out.entropy = metrics.entropy(values, mask)
            out.top = metrics.top_indices(enc.indices, mask)
            out.top_noisy = torch.full_like(out.top, -1)  # rows without noise (the prompt) are never read
        if enc.f_noisy is not None:
            noisy_values, noisy_indices = enc.f_noisy.topk(metrics.TOP_STABILITY, dim=-1)
            out.top_noisy[len(x) - noisy :] = metrics.top_indices(noisy_indices, noisy_values > 0)
        return out

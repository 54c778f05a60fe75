"""How a large run's report stays bounded: the seeded, domain-stratified subsamples its expensive steps
read, and the rescaling that carries a subsample's resampled spread over to the whole run.

What is capped, and what is not (``Report.probe_samples``, ``Report.resample_samples``):

* **kept on every sample** (cheap, rank-based, O(n log n)): each metric's AUROC and its score
  interval, the win rate and its Wilson interval, the paired effect, the Wilcoxon p and the BH q; the
  family-wise sign-flip permutation null (one matrix product per chunk of permutations, linear in n,
  memory bounded by the chunk); the SAE features' effect sizes, firing frequencies, sign tests and q
  (sparse column sums, O(non-zeros));
* **the probes** (logistic regressions, ``repeats × folds`` fits per layer and input, plus one per
  held-out domain) are fitted and scored on at most ``probe_samples`` samples: a run above the cap has
  its probe rows, intervals and generalisation on that subsample (their ``n`` says how many);
* **the paired bootstrap against the baseline** (``vs_baseline``, B resamples × n weights per group)
  and **the SAE features' null threshold** (draws × non-zeros) run on at most ``resample_samples``
  samples of the group and are rescaled to the whole group (:func:`rescale`);
* **the dashboard's centroid-drift scatter** draws at most
  :data:`~saecli.report.dashboard.SCATTER_POINTS` samples (the first of the same order); its share
  above the diagonal is on every sample.

**Streamed, not subsampled** (exact on every sample, memory bounded): the SAE features of a run larger
than :data:`~saecli.report.features.FEATURE_ROWS` are read a block of rows at a time and their
statistics added block by block (sums and counts: the same values as at once, up to the order of
floating-point additions); a large group's metric columns are made one at a time
(:class:`~saecli.report.detection.LazyPairs`), and a domain's rows one column at a time
(:class:`~saecli.report.detection.GroupRows`); the fold groups come from hashes of the texts
(:mod:`.texts`), not from the texts.

**The subsample** (:func:`subsample_order`): each domain's samples are put in a seeded random order
(one generator per seed and domain, so a domain's order never depends on the others), sample i getting
the key ``(r_i + ½) / n_d`` (r_i its place in its domain's order, n_d the domain's size); all samples
sorted by key (ties: first-seen domain first). The first k of that order, for any k, hold each domain
within one sample of its share ``k·n_d / n`` (stratified), and the first k are among the first k' > k
(nested: the probes' subsample lies inside the bootstrap's, so a probe's scores are resampled whole).
A sample is drawn with both its texts (fact and hallucination: the pair is the unit).

**Why the rescaling holds** (:func:`rescale`): an AUROC of n pairs is a two-sample U-statistic, so
``√n·(θ̂_n − θ)`` tends to a normal law whose variance does not depend on n (Hoeffding); the same holds
for a difference of two AUROCs on the same pairs, and for each feature's paired d_z under sign flips.
The bootstrap spread of θ̂ on m pairs drawn from the run therefore estimates that of θ̂_n after the
factor ``√(m / n)`` (the m-out-of-n bootstrap, Bickel, Götze & van Zwet 1997): each resampled value
``θ*_m`` becomes ``θ̂_n + √(m/n)·(θ*_m − θ̂_m)``. With m ≥ 10⁴ pairs the Monte-Carlo and subsample
error of the interval's width is a few per cent, far below its use (does the interval exclude 0?).
Below the cap (m = n) the factor is 1 and θ̂_m = θ̂_n: the values are exactly the unscaled ones.

Boundary: numpy only; no files, no polars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from saecli.report.stats import group_rng

PROBE_SAMPLES = 5_000
"""Samples the probes are fitted on at most (``--probe-samples``): 10,000 texts per fit, an AUROC
standard error of about 0.005 (Hanley-McNeil at 0.8), while each fit's time grows with the texts."""
RESAMPLE_SAMPLES = 10_000
"""Samples of a group the paired bootstrap and the feature null draw from at most (``--resample-samples``)."""
MIN_SAMPLES = 20
"""The smallest cap either option takes (fewer would leave the cross-validation or the bootstrap empty)."""


def subsample_order(domains: Sequence[Any], seed: int) -> np.ndarray:
    """All sample indices in the seeded, domain-stratified order the caps take their first k from
    (module docstring): key ``(r_i + ½) / n_d``, ties by first-seen domain, then by index."""
    labels = np.asarray([str(d) for d in domains], dtype=object)
    n = labels.size
    key = np.empty(n, dtype=np.float64)
    rank_of = np.empty(n, dtype=np.int64)
    for k, domain in enumerate(dict.fromkeys(labels.tolist())):
        members = np.flatnonzero(labels == domain)
        order = group_rng(seed, f"subsample:{domain}").permutation(members.size)
        key[members[order]] = (np.arange(members.size) + 0.5) / members.size
        rank_of[members] = k
    return np.lexsort((np.arange(n), rank_of, key))


def subsample(domains: Sequence[Any], cap: int, seed: int) -> np.ndarray | None:
    """The row indices (ascending, the run's order) of the first ``cap`` samples of
    :func:`subsample_order`, or None when there are no more than ``cap`` samples (nothing is left out)."""
    if len(domains) <= cap:
        return None
    return np.sort(subsample_order(domains, seed)[:cap])


def rescale(values: np.ndarray, full: float, part: float, m: int, n: int) -> np.ndarray:
    """Resampled values of a statistic on m of n pairs carried to the whole: ``full + √(m/n)·(values −
    part)`` (``full``, ``part``: the statistic on the n and on the m pairs). Unchanged when m = n."""
    if m == n or values.size == 0:
        return values
    if not (math.isfinite(full) and math.isfinite(part)) or n == 0:
        return np.full(values.shape, math.nan)
    return full + math.sqrt(m / n) * (values - part)


def sampled_note(what: str, m: int, n: int) -> str:
    """The line summary.md, the notes and ``--json`` carry for a capped step."""
    return f"{what}: on {m:,} of {n:,} samples (a seeded subsample, stratified by domain)"

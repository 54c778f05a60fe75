"""The SAE features that differ most between a sample's fact and its hallucination, per layer, and
which of them the data support.

For feature j of layer L's SAE and sample i, ``d_ij = f_j(hall_i) − f_j(fact_i)`` (activations at the
text's last token, 0 where the feature does not fire). Per feature, over the n samples:

* ``effect_size`` = ``mean(d_j) / sd(d_j)`` (sd with ddof = 1): the paired standardised mean
  difference, Cohen's d_z. > 0: stronger on hallucinations. ±inf when every sample differs by the
  same non-zero amount (sd 0);
* ``freq_fact`` / ``freq_hall``: the fraction of fact / hallucination texts where the feature fires;
* ``score`` = ``|d_z| · (1 − min(freq_fact, freq_hall))``, the ranking: a dense, generic feature that
  fires on nearly every text of both kinds (whose small regular shifts can give a large |d_z|) is taken
  down in proportion, a feature that fires on hallucinations and not on facts keeps its whole effect;
* ``auroc``: the AUROC of the feature's activation, hall vs fact (ties at 0 count ½).

**Which differences are real.** Every feature that fires on at least one text of the layer (fact or
hallucination) is tested, ``tested`` of them per layer; the FDR is controlled per layer.

* ``p``: the exact two-sided **sign test** of the paired differences: of the ``n_up + n_down``
  samples where the feature's activation differs, ``n_up`` are higher on the hallucination;
  ``p = min(1, 2·P(X ≤ min(n_up, n_down)))``, X ~ Binomial(n_up + n_down, ½). Under "fact and
  hallucination are exchangeable within a pair" each non-zero difference is + or − with probability
  ½ independently, so p is exact whatever the scale or sparsity of the feature (4 samples all one
  way: p = 0.125).
* ``q``: the Benjamini–Hochberg adjusted p over all ``tested`` features of the layer
  (``q_(k) = min_{j ≥ k} p_(j)·m / j``); q ≤ α (0.05) keeps the expected share of false discoveries
  among them at most α.
* ``null_threshold``: the score a feature must beat. Fact and hallucination are swapped at random
  within pairs (each sample's pair flipped with probability ½, the same flips for every feature:
  ``bootstrap`` draws, seeded per layer), the scores of all features recomputed, and the maximum
  over features kept; the threshold is the 95th percentile of those maxima. Under no effect the
  best-scoring feature beats it in only 5% of datasets.
* ``significant``: 1 when ``q ≤ α`` **and** ``score > null_threshold``, else 0. Without draws
  (``bootstrap`` = 0) there is no threshold and no feature is called significant.

``ci_low``/``ci_high`` are NaN: the bootstrap interval of d_z after selecting the top features by the
same data is not evidence (a one-way rare feature always "excludes 0"); the fields stay so that
readers of older columns see a missing value.

Only features that differ on at least one sample are ranked; the top N by score (ties: lower index
first) are kept per layer. ``url`` is the feature's Neuronpedia page,
``https://www.neuronpedia.org/{neuronpedia_id}/{feature}``, when the SAE's manifest entry carries a
non-empty ``neuronpedia_id``; empty otherwise.

**On which samples.** ``top{k}_sample`` (k = 1..3) is the id of the sample with the k-th largest
``|d_ij|`` (ties: earlier row first; only samples where the feature differs, so a feature that
differs on fewer than three leaves the rest empty), ``top{k}_diff`` its ``d_ij`` (signed) and
``top{k}_text`` an excerpt of its texts (:func:`sample_excerpt`; empty when the run kept no texts).

Vectorised on CSR matrices: the sums over samples are sparse column sums (O(non-zeros)), the null
draws sparse products of a (draws × n) sign matrix with the differences (O(draws × non-zeros)).
A large run is ranked a block of :data:`FEATURE_ROWS` samples at a time (:func:`rank_feature_blocks`):
every statistic but the AUROC and the top samples is a sum or count over samples
(:class:`FeatureSums`), added block by block; the top features' columns are then read again and made
dense one feature at a time.

Boundary: numpy and scipy (imported inside the functions); no files, no drawing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saecli.report.stats import auroc, group_rng

FEATURES_TOP = 50
"""Features kept per layer in features.csv."""
FEATURES_ALPHA = 0.05
"""The FDR level of ``q`` and the tail of the null threshold (its 1 − α percentile)."""
NULL_BLOCK = 1 << 20
"""Draws × d_sae values held at once by the null (8 MiB of float64 per array)."""
NEURONPEDIA = "https://www.neuronpedia.org"
TOP_SAMPLES = 3
"""Samples named per feature (``top{k}_sample`` …)."""
EXCERPT_PROMPT, EXCERPT_ANSWER = 60, 30
"""Characters of the prompt (its end: the features are read at the last token) and of each answer in an excerpt."""


@dataclass(frozen=True)
class FeatureRow:
    """A line of features.csv."""

    layer: int
    rank: int
    feature: int
    score: float
    effect_size: float
    ci_low: float  # NaN: post-selection intervals are not reported (module docstring)
    ci_high: float
    mean_fact: float
    mean_hall: float
    mean_diff: float
    freq_fact: float
    freq_hall: float
    auroc: float
    n: int
    url: str
    n_up: int = 0  # samples where the activation is higher on the hallucination
    n_down: int = 0  # … lower
    p: float = math.nan  # exact two-sided sign test
    q: float = math.nan  # Benjamini–Hochberg over the layer's tested features
    tested: int = 0  # features of the layer that fire on at least one text (BH's m)
    null_threshold: float = math.nan  # 95th percentile of the max score under random swaps
    significant: int = 0  # 1: q ≤ α and score > null_threshold
    top1_sample: str = ""  # the sample with the largest |hall − fact| on this feature
    top1_diff: float = math.nan  # its hall − fact
    top1_text: str = ""  # an excerpt of its texts
    top2_sample: str = ""
    top2_diff: float = math.nan
    top2_text: str = ""
    top3_sample: str = ""
    top3_diff: float = math.nan
    top3_text: str = ""
    null_samples: int = 0  # samples the null threshold's draws were made on (< n: a subsample, rescaled)


@dataclass(frozen=True)
class FeatureTests:
    """The sign test of every feature of a layer (arrays of length d_sae)."""

    n_up: np.ndarray
    n_down: np.ndarray
    p: np.ndarray  # 1 for a feature no sample moves; NaN where untested
    q: np.ndarray  # NaN where untested
    tested: np.ndarray  # bool: fires on at least one text


def neuronpedia_url(neuronpedia_id: Any, feature: int) -> str:
    """The feature's Neuronpedia page, or "" when the SAE carries no (non-empty string) id."""
    if not isinstance(neuronpedia_id, str) or not neuronpedia_id.strip():
        return ""
    return f"{NEURONPEDIA}/{neuronpedia_id.strip().strip('/')}/{int(feature)}"


def neuronpedia_id(manifest: dict[str, Any], layer: int) -> str | None:
    """``manifest["saes"][str(layer)]["neuronpedia_id"]`` when it is a non-empty string."""
    saes = manifest.get("saes")
    entry = saes.get(str(layer)) if isinstance(saes, dict) else None
    value = entry.get("neuronpedia_id") if isinstance(entry, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _clip(text: str, limit: int, *, tail: bool = False) -> str:
    text = " ".join(text.split())  # one line in a CSV cell, whatever the data's newlines
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :] if tail else text[: limit - 1] + "…"


def sample_excerpt(prompt: str, fact: str, hallucination: str) -> str:
    """``…end of the prompt → fact: … / hall: …``, each part cut to a few dozen characters."""
    answers = f"fact: {_clip(fact, EXCERPT_ANSWER)} / hall: {_clip(hallucination, EXCERPT_ANSWER)}"
    return f"{_clip(prompt, EXCERPT_PROMPT, tail=True)} → {answers}"


def top_samples(diffs: np.ndarray, k: int = TOP_SAMPLES) -> list[list[int]]:
    """Per column of the (n × m) differences, the rows of its ``k`` largest non-zero ``|d|`` (ties:
    lower row first)."""
    rows = np.arange(diffs.shape[0])
    out = []
    for column in diffs.T:
        size = np.abs(column)
        order = np.lexsort((rows, -size))[:k]
        out.append([int(i) for i in order if size[i] > 0])
    return out


def _top_fields(rows: list[int], diffs: np.ndarray, ids: Sequence[str], excerpts: Sequence[str] | None) -> dict[str, Any]:
    """The ``top{k}_*`` fields of a feature row from its :func:`top_samples` rows and its differences."""
    fields: dict[str, Any] = {}
    for k, i in enumerate(rows, 1):
        fields |= {f"top{k}_sample": str(ids[i]), f"top{k}_diff": float(diffs[i]),
                   f"top{k}_text": excerpts[i] if excerpts is not None else ""}  # fmt: skip
    return fields


def _column_sums(m: Any) -> np.ndarray:
    return np.asarray(m.sum(axis=0), dtype=np.float64).ravel()


def _fires(m: Any) -> Any:
    """The 0/1 CSR matrix of the entries > 0."""
    import scipy.sparse as sp

    m = sp.csr_matrix(m)
    out = sp.csr_matrix(((m.data > 0).astype(np.float64), m.indices, m.indptr), shape=m.shape)
    out.eliminate_zeros()
    return out


def firing_frequency(activations: Any) -> np.ndarray:
    """Fraction of rows of a CSR matrix where each column is > 0."""
    import scipy.sparse as sp

    m = sp.csr_matrix(activations)
    return _fire_counts(m) / max(m.shape[0], 1)


def _d_z(mean: np.ndarray, sum_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """SD (ddof 1) and d_z from the mean and the sum of squares of the differences (any shape)."""
    var = (sum_sq - n * mean**2) / (n - 1)
    sd = np.sqrt(np.clip(var, 0.0, None))
    # Rounding leaves a constant column a tiny SD instead of 0: below 1e-12 of its scale it is 0.
    sd[sd <= 1e-12 * np.abs(mean)] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        dz = np.where(sd > 0, mean / sd, np.where(mean == 0, 0.0, np.copysign(np.inf, mean)))
    return sd, dz


def paired_effect_sizes(fact: Any, hall: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: mean and ddof-1 SD of hall − fact over rows, and d_z = mean / SD (0 where nothing
    differs, ±inf where every row differs by the same amount). Sparse in, dense (d_sae,) out."""
    import scipy.sparse as sp

    n = fact.shape[0]
    d = sp.csr_matrix(hall, dtype=np.float64) - sp.csr_matrix(fact, dtype=np.float64)
    mean = _column_sums(d) / n
    if n < 2:
        return mean, np.full(mean.shape, math.nan), np.zeros(mean.shape)
    sd, dz = _d_z(mean, _column_sums(d.multiply(d)), n)
    return mean, sd, dz


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q) of ``p``, over all its entries: ``q_(k) = min_{j ≥ k}
    p_(j)·m / j``, at most 1."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="mergesort")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.empty(m)
    q[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return q


def sign_tests(fact: Any, hall: Any) -> FeatureTests:
    """The exact two-sided sign test of hall − fact for every feature, and the BH q over the features
    that fire on at least one text (module docstring)."""
    sums = FeatureSums()
    sums.add(fact, hall)
    return _tests_of(sums)


def null_max_scores(fact: Any, hall: Any, draws: int, rng: np.random.Generator) -> np.ndarray:
    """The largest score over all features in each of ``draws`` datasets where each sample's fact and
    hallucination are swapped with probability ½ (the same swaps for every feature).

    A swap of sample i negates d_i (the mean moves, the sum of squares does not) and trades which of
    its texts counts as the fact in the firing frequencies; both are sparse products of the draws'
    swap matrix with the n × d_sae differences, in blocks of :data:`NULL_BLOCK` values (draws × the
    larger of n and d_sae: the swap matrices, too, stay within the block however many samples there are;
    the generator draws each row in turn, so the block size does not change the draws).
    """
    import scipy.sparse as sp

    fact, hall = sp.csr_matrix(fact, dtype=np.float64), sp.csr_matrix(hall, dtype=np.float64)
    n, d_sae = fact.shape
    d = hall - fact
    sum_sq = _column_sums(d.multiply(d))
    fires_fact, fires_hall = _fires(fact), _fires(hall)
    total_fact, total_both = _column_sums(fires_fact), _column_sums(fires_fact + fires_hall)
    d_t, gain_t = d.T.tocsr(), (fires_hall - fires_fact).T.tocsr()  # d_sae × n
    out = np.empty(draws)
    rows = max(1, NULL_BLOCK // max(d_sae, n, 1))
    for start in range(0, draws, rows):
        swapped = rng.random((min(rows, draws - start), n)) < 0.5  # draws × n
        signs = np.where(swapped, -1.0, 1.0)
        mean = np.asarray(d_t @ signs.T).T / n
        _, dz = _d_z(mean, sum_sq, n)
        on_fact = total_fact + np.asarray(gain_t @ swapped.T.astype(np.float64)).T
        both = np.minimum(on_fact, total_both - on_fact) / n
        out[start : start + swapped.shape[0]] = (np.abs(dz) * (1.0 - both)).max(axis=1)
    return out


def null_threshold(
    fact: Any, hall: Any, draws: int, rng: np.random.Generator, alpha: float = FEATURES_ALPHA, rows: np.ndarray | None = None
) -> float:  # fmt: skip
    """The 1 − α percentile of :func:`null_max_scores` (NaN without draws).

    ``rows`` (m of the n samples, e.g. :func:`~saecli.report.sampling.subsample`): the draws are made
    on those samples only and the threshold carried to n by ``√(m/n)``. Under the sign-flip null each
    feature's mean difference is a sum of independent symmetric terms over the samples while its SD
    tends to a constant, so ``√n·d_z`` has a limit law that does not depend on n (jointly over the
    features, hence for their maximum; the ``1 − min(freq)`` factor converges to its full-data
    value): the threshold of m samples times ``√(m/n)`` estimates that of n.
    """
    n = fact.shape[0]
    if draws <= 0 or n < 2:
        return math.nan
    if rows is not None and rows.size < n:
        part = null_threshold(fact[rows], hall[rows], draws, rng, alpha)
        return part * math.sqrt(rows.size / n)
    return float(np.percentile(null_max_scores(fact, hall, draws, rng), 100 * (1 - alpha)))


FEATURE_ROWS = 1 << 15
"""Samples whose activations of one layer's features are held at once (:func:`rank_feature_blocks`).
A run of at most this many is ranked in one block: the same sums, in the same order, as at once."""


@dataclass
class FeatureSums:
    """The additive statistics of one layer's paired differences ``d = hall − fact`` over the blocks of
    samples added so far (arrays of length d_sae): every ranking statistic but the AUROC and the top
    samples is a function of these, so a run is ranked a block of rows at a time with the same result."""

    n: int = 0
    sum_d: Any = None  # Σ d (float64)
    sum_sq: Any = None  # Σ d²
    fires_fact: Any = None  # texts where the feature fires (counts)
    fires_hall: Any = None
    n_up: Any = None  # samples where d > 0
    n_down: Any = None  # … d < 0

    def add(self, fact: Any, hall: Any) -> None:
        """Add a block of rows (CSR fact and hall activations of the same samples)."""
        import scipy.sparse as sp

        fact, hall = sp.csr_matrix(fact, dtype=np.float64), sp.csr_matrix(hall, dtype=np.float64)
        d_sae = fact.shape[1]
        d = hall - fact
        parts = (
            _column_sums(d), _column_sums(d.multiply(d)), _fire_counts(fact), _fire_counts(hall),
            np.bincount(d.indices[d.data > 0], minlength=d_sae), np.bincount(d.indices[d.data < 0], minlength=d_sae),
        )  # fmt: skip
        names = ("sum_d", "sum_sq", "fires_fact", "fires_hall", "n_up", "n_down")
        for name, value in zip(names, parts, strict=True):
            setattr(self, name, value if getattr(self, name) is None else getattr(self, name) + value)
        self.n += fact.shape[0]


def _fire_counts(m: Any) -> np.ndarray:
    return np.bincount(m.indices[m.data > 0], minlength=m.shape[1])


def _tests_of(sums: FeatureSums) -> FeatureTests:
    """:func:`sign_tests` from a layer's :class:`FeatureSums`."""
    from scipy.stats import binom

    n_up, n_down = sums.n_up, sums.n_down
    moved = n_up + n_down
    p = np.minimum(1.0, 2.0 * binom.cdf(np.minimum(n_up, n_down), moved, 0.5))
    p[moved == 0] = 1.0
    tested = (sums.fires_fact > 0) | (sums.fires_hall > 0)
    p[~tested] = math.nan
    q = np.full(p.size, math.nan)
    q[tested] = benjamini_hochberg(p[tested])
    return FeatureTests(n_up=n_up, n_down=n_down, p=p, q=q, tested=tested)


def rank_features(
    fact: Any, hall: Any, *, layer: int, top: int = FEATURES_TOP, bootstrap: int = 1000, seed: int = 0,
    neuronpedia: str | None = None, alpha: float = FEATURES_ALPHA, sample_ids: Sequence[str] | None = None,
    excerpts: Sequence[str] | None = None, null_rows: np.ndarray | None = None,
) -> list[FeatureRow]:  # fmt: skip
    """The ``top`` features of one layer by score, with their sign test, BH q, the null threshold of
    the score (``bootstrap`` random-swap draws, seeded by ``seed`` and the layer), the verdict, and the
    samples where each differs most, named by ``sample_ids`` (default: the row numbers) with their
    ``excerpts`` (:func:`sample_excerpt`, one per row) when given. ``null_rows``: the samples the null's
    draws are made on (:func:`null_threshold`; default every sample); every other statistic is on all n.
    All rows at once: :func:`rank_feature_blocks` of one block."""
    import scipy.sparse as sp

    fact, hall = sp.csr_matrix(fact), sp.csr_matrix(hall)
    n = fact.shape[0]
    null = (fact, hall) if null_rows is None or null_rows.size >= n else (fact[null_rows], hall[null_rows])
    return rank_feature_blocks(
        lambda: [(fact, hall)], layer=layer, top=top, bootstrap=bootstrap, seed=seed, neuronpedia=neuronpedia, alpha=alpha,
        sample_ids=sample_ids, excerpts=excerpts, null=null,
    )  # fmt: skip


def rank_feature_blocks(
    blocks: Any, *, layer: int, top: int = FEATURES_TOP, bootstrap: int = 1000, seed: int = 0,
    neuronpedia: str | None = None, alpha: float = FEATURES_ALPHA, sample_ids: Sequence[str] | None = None,
    excerpts: Sequence[str] | None = None, null: tuple[Any, Any] | None = None,
) -> list[FeatureRow]:  # fmt: skip
    """:func:`rank_features` of a layer read a block of samples at a time: ``blocks()`` gives the (fact,
    hall) CSR activations of successive row blocks, in the samples' order, afresh at each call. It is
    called twice: once for the :class:`FeatureSums` (effect sizes, frequencies, sign tests, the ranking),
    once for the top features' columns (means, AUROC, top samples), each feature's column made dense
    alone. Memory: one block, plus O(n) per top feature. The same values as at once: the sums are
    exact in integers and add block by block in floating point (one block: the same sums).

    ``null``: the (fact, hall) rows the null threshold's draws are made on, rescaled by ``√(m/n)`` when
    they are m < n of the samples (:func:`null_threshold`); None: no threshold."""
    import scipy.sparse as sp

    sums = FeatureSums()
    for fact, hall in blocks():
        sums.add(fact, hall)
    n = sums.n
    if n < 2:
        return []
    mean = sums.sum_d / n
    sd, dz = _d_z(mean, sums.sum_sq, n)
    freq_fact, freq_hall = sums.fires_fact / n, sums.fires_hall / n
    score = np.abs(dz) * (1.0 - np.minimum(freq_fact, freq_hall))
    candidates = np.flatnonzero((sd > 0) | (mean != 0))
    order = candidates[np.lexsort((candidates, -score[candidates]))][:top]
    if order.size == 0:
        return []
    tests = _tests_of(sums)
    threshold, null_samples = math.nan, 0
    if null is not None and bootstrap:
        m = null[0].shape[0]
        threshold = null_threshold(null[0], null[1], bootstrap, group_rng(seed, f"features-null:l{layer}"), alpha)
        threshold, null_samples = (threshold * math.sqrt(m / n) if m < n else threshold), min(m, n)
    picked = [(sp.csr_matrix(f)[:, order], sp.csr_matrix(h)[:, order]) for f, h in blocks()]
    f_sel = sp.vstack([f for f, _ in picked], format="csc")
    h_sel = sp.vstack([h for _, h in picked], format="csc")
    del picked
    tested = int(tests.tested.sum())
    ids = range(n) if sample_ids is None else sample_ids  # a row number is named by itself (str below)
    rows = []
    for rank, j in enumerate(order.tolist(), 1):
        f_col = f_sel[:, rank - 1].toarray().ravel().astype(np.float64)
        h_col = h_sel[:, rank - 1].toarray().ravel().astype(np.float64)
        diff = h_col - f_col
        q = float(tests.q[j])
        rows.append(
            FeatureRow(
                layer=int(layer),
                rank=rank,
                feature=int(j),
                score=float(score[j]),
                effect_size=float(dz[j]),
                ci_low=math.nan,
                ci_high=math.nan,
                mean_fact=float(f_col.mean()),
                mean_hall=float(h_col.mean()),
                mean_diff=float(mean[j]),
                freq_fact=float(freq_fact[j]),
                freq_hall=float(freq_hall[j]),
                auroc=auroc(h_col, f_col),
                n=int(n),
                url=neuronpedia_url(neuronpedia, j),
                n_up=int(tests.n_up[j]),
                n_down=int(tests.n_down[j]),
                p=float(tests.p[j]),
                q=q,
                tested=tested,
                null_threshold=threshold,
                significant=int(q <= alpha and math.isfinite(threshold) and score[j] > threshold),
                **_top_fields(top_samples(diff[:, None])[0], diff, ids, excerpts),
                null_samples=null_samples,
            )  # fmt: skip
        )
    return rows

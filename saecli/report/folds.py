"""The folds of the probes' cross-validation: which samples must stay on one side (they share a
text), and the stratified, grouped, seeded split of a run's fact and hallucination rows.

Boundary: numpy and scikit-learn (imported inside the function); reads no file."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def text_groups(texts: Sequence[Iterable[Any]]) -> np.ndarray:
    """A group label per sample (0, 1, … in first-seen order): samples that share any identical text
    (stripped, non-empty; in any field: a prompt equal to another sample's fact counts) are in one
    group, transitively (union-find). ``texts[i]``: sample i's texts, e.g. (prompt, fact, hallucination)."""
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, row in enumerate(texts):
        for text in row:
            if isinstance(text, str) and text.strip():
                j = first.setdefault(text.strip(), i)
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    roots = [root(i) for i in range(len(texts))]
    labels = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return np.asarray([labels[r] for r in roots], dtype=np.int64)


def sample_groups(samples: Sequence[Any]) -> np.ndarray:
    """:func:`text_groups` of :class:`saecli.data.Sample`-like objects over the texts a run reads: the
    prompt, the fact text (prompt + " " + fact) and the hallucination text (prompt + " " + hallucination).
    Pass the samples in the run's row order."""
    return text_groups([(s.prompt, s.fact_text, s.hall_text) for s in samples])


def group_codes(n: int, groups: Sequence[Any] | None) -> np.ndarray:
    """Integer codes of the per-sample ``groups`` (each sample its own group when None)."""
    if groups is None:
        return np.arange(n)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} samples")
    return np.unique(np.asarray(list(groups), dtype=object).astype(str), return_inverse=True)[1]


def grouped_folds(
    strata: Sequence[Any], n_splits: int, seed: int, groups: Sequence[Any] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) row indices of each fold over the 2n rows fact₀…factₙ₋₁, hall₀…hallₙ₋₁.

    ``StratifiedGroupKFold`` (shuffled with ``seed``), groups = ``groups`` (a label per sample; default:
    the sample itself) on both of a sample's rows, strata = each sample's domain (``strata``): a
    group's texts never straddle train and test.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n = len(strata)
    codes = np.unique(np.asarray(list(strata), dtype=object).astype(str), return_inverse=True)[1]
    rows = np.tile(group_codes(n, groups), 2)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only k members"
        return [(train, test) for train, test in splitter.split(np.zeros((2 * n, 1)), np.tile(codes, 2), rows)]


def hashed_text_groups(hashes: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """:func:`text_groups` from hashes of the texts: ``hashes[i, k]`` (uint64) stands for sample i's
    k-th text (stripped), ``present[i, k]`` says whether it has one (a missing or empty text joins no
    group). The same labels as :func:`text_groups` of the texts, 0, 1, … in first-seen order, when no
    two different texts share a hash (64 bits: about 2.4e-7 for three million distinct texts; a
    collision can only join two groups, never split one, so a shared text still never straddles folds).

    Vectorised: the connected components of the graph joining each sample to its texts
    (``scipy.sparse.csgraph``), memory linear in the samples, no Python object per text.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    present = np.ones(hashes.shape, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    sample, _ = np.nonzero(present)
    _, text = np.unique(hashes[present], return_inverse=True)
    nodes = n + (int(text.max()) + 1 if text.size else 0)
    graph = sp.csr_matrix((np.ones(sample.size, dtype=np.int8), (sample, n + text.ravel())), shape=(nodes, nodes))
    _, component = connected_components(graph, directed=False)
    component = component[:n]
    # label a component by where it first appears (its lowest sample), as text_groups does
    _, first, inverse = np.unique(component, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse.ravel()]

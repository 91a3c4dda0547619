"""Deterministic, stratified, disjoint splits of a labelled set."""

from __future__ import annotations

import numpy as np

from workers.datasets.types import DataError


def stratified_split(labels: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint index arrays of the requested sizes, each with the label proportions of ``labels``.

    Per split, every class gets its proportional share rounded by largest remainder, so sizes are
    exact. Indices are drawn from one seeded permutation per class: the same inputs always give
    the same splits, and a larger split of the same seed contains the smaller one's first picks.
    """
    labels = np.asarray(labels)
    if sum(sizes) > len(labels):
        raise DataError(f"asked for {sum(sizes)} images in splits of {sizes}, but the set has only {len(labels)}")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise DataError(
            f"the data set has {len(classes)} class(es); retrieval and classification need at least 2 "
            "(in an image folder: one subfolder per class or identity)"
        )
    rng = np.random.default_rng(seed)
    pools = {label: rng.permutation(np.flatnonzero(labels == label)) for label in classes}
    taken = dict.fromkeys(classes, 0)
    splits = []
    for size in sizes:
        remaining = np.array([counts[i] - taken[label] for i, label in enumerate(classes)], dtype=float)
        shares = _largest_remainder(size, remaining)
        parts = []
        for label, share in zip(classes, shares):
            parts.append(pools[label][taken[label] : taken[label] + share])
            taken[label] += share
        splits.append(np.sort(np.concatenate(parts)))
    return splits


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total``, never above a weight."""
    if total == 0:
        return np.zeros(len(weights), dtype=int)
    exact = total * weights / weights.sum()
    shares = np.minimum(np.floor(exact).astype(int), weights.astype(int))
    order = np.argsort(-(exact - shares), kind="stable")
    index = 0
    while shares.sum() < total:
        candidate = order[index % len(order)]
        if shares[candidate] < weights[candidate]:
            shares[candidate] += 1
        index += 1
    return shares

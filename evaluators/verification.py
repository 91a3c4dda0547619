"""Face-verification accuracy: TAR at fixed FARs over all probe/enrolled pairs, and rank-1 identification.

A *pair* is one probe (embedded by the query model) and one enrolled image (embedded by the
gallery model); its score is their cosine similarity (inner product of L2-normalised vectors).
Every probe is paired with every enrolled image: pairs of the same identity are *genuine*, all
others *impostor*. When probe and enrolled sets share images (the same image id on both sides),
those identical-image pairs are left out: a picture matched with itself says nothing about
verification. Rank-1 identification: the share of probes whose nearest enrolled image (identical
image excluded) has their identity, over the probes with at least one enrolled image of their
identity (a probe without one is no identification trial).

Probes without a mate (no enrolled image of their identity; user-assigned splits can have them):
as for retrieval (``evaluators.retrieval``), they are left out of rank-1 and counted
(``num_probes - num_mated_probes``); their pairs still count as impostor pairs, since a stranger
presenting a face is exactly what a verification system must reject. Data without any genuine
pair (no probe has a mate) or without any impostor pair is an input error.

Threshold rule (``tar_at_far``): accept a pair when its score is strictly above the threshold.
For a target FAR over ``n`` impostor pairs, at most ``k = floor(FAR * n)`` impostors may be
accepted, so the threshold is the ``(k + 1)``-th highest impostor score; impostors tied with it
are rejected, so the achieved FAR is <= the target. With fewer than ``1 / FAR`` impostor pairs
(``k = 0``) the threshold is the highest impostor score: the target FAR is not resolvable and the
metric is that of FAR = 0; ``num_impostor_pairs`` is reported so the reader can tell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evaluators.knn import FaissInnerProductKNN

DEFAULT_FARS = (1e-2, 1e-3)


def far_label(far: float) -> str:
    """1e-2 -> '1e-2', 5e-3 -> '5e-3', 0.25 -> '0.25': the FAR as it appears in metric names."""
    mantissa, exponent = f"{far:.0e}".split("e")
    short = f"{mantissa}e{int(exponent)}"
    return short if float(short) == far else f"{far:g}"


@dataclass(frozen=True)
class OperatingPoint:
    """TAR at one target FAR: the threshold used and the FAR actually reached (both in [0, 1])."""

    far_target: float
    tar: float
    threshold: float
    far_achieved: float


def tar_at_far(genuine_scores: np.ndarray, impostor_scores: np.ndarray, far: float) -> OperatingPoint:
    """The accuracy calculator: TAR at ``far`` from genuine and impostor pair scores (module rule)."""
    genuine = np.asarray(genuine_scores, dtype=np.float64).ravel()
    impostor = np.asarray(impostor_scores, dtype=np.float64).ravel()
    if not 0 < far < 1:
        raise ValueError(f"FAR must be in (0, 1), got {far}")
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError(f"TAR@FAR needs genuine and impostor pairs, got {genuine.size} and {impostor.size}")
    allowed = math.floor(far * impostor.size + 1e-9)
    # The (allowed + 1)-th highest impostor score, without sorting all of them.
    position = impostor.size - 1 - allowed
    threshold = float(np.partition(impostor, position)[position])
    return OperatingPoint(
        far_target=far,
        tar=float((genuine > threshold).mean()),
        threshold=threshold,
        far_achieved=float((impostor > threshold).mean()),
    )


@dataclass(frozen=True)
class VerificationMetrics:
    operating_points: tuple[OperatingPoint, ...]
    rank1: float
    num_genuine_pairs: int
    num_impostor_pairs: int
    num_probes: int
    num_enrolled: int
    num_mated_probes: int
    excluded_identical_pairs: int = 0

    @property
    def probes_without_mate(self) -> int:
        """Probes left out of rank-1: no enrolled image of their identity (module rules)."""
        return self.num_probes - self.num_mated_probes

    def tar(self, far: float) -> float:
        """TAR in percent at a FAR this evaluation was asked for."""
        for point in self.operating_points:
            if math.isclose(point.far_target, far):
                return 100.0 * point.tar
        raise KeyError(f"FAR {far} was not evaluated; evaluated: {[p.far_target for p in self.operating_points]}")

    def as_dict(self, prefix: str) -> dict[str, float]:
        """``{prefix}_tar_far_1e-2`` (percent) per FAR and ``{prefix}_rank1`` (percent)."""
        metrics = {f"{prefix}_tar_far_{far_label(p.far_target)}": 100.0 * p.tar for p in self.operating_points}
        metrics[f"{prefix}_rank1"] = self.rank1
        return metrics


class VerificationEvaluator:
    """Scores every probe against every enrolled image through a kNN backend, then TAR@FAR and rank-1."""

    def __init__(self, knn: FaissInnerProductKNN | None = None, fars: tuple[float, ...] = DEFAULT_FARS,
                 probe_chunk: int = 512):
        for far in fars:
            if not 0 < far < 1:
                raise ValueError(f"FARs must be in (0, 1), got {far}")
        self.knn = knn or FaissInnerProductKNN()
        self.fars = tuple(fars)
        self.probe_chunk = probe_chunk

    @staticmethod
    def metric_names(prefix: str, fars: tuple[float, ...] = DEFAULT_FARS) -> tuple[str, ...]:
        return (*(f"{prefix}_tar_far_{far_label(far)}" for far in fars), f"{prefix}_rank1")

    def evaluate(
        self,
        probe_embeddings: np.ndarray,
        probe_labels: np.ndarray,
        enrolled_embeddings: np.ndarray,
        enrolled_labels: np.ndarray,
        probe_ids: np.ndarray | None = None,
        enrolled_ids: np.ndarray | None = None,
    ) -> VerificationMetrics:
        """``probe_ids``/``enrolled_ids`` name the underlying images; pairs of equal ids are excluded."""
        probe_labels, enrolled_labels = np.asarray(probe_labels), np.asarray(enrolled_labels)
        if len(probe_embeddings) != len(probe_labels) or len(enrolled_embeddings) != len(enrolled_labels):
            raise ValueError("every embedding needs exactly one label")
        if len(probe_labels) == 0 or len(enrolled_labels) == 0:
            raise ValueError("verification needs at least one probe and one enrolled image")
        if (probe_ids is None) != (enrolled_ids is None):
            raise ValueError("give image ids for both probes and enrolled images, or for neither")
        genuine_parts, impostor_parts = [], []
        rank1_hits = excluded = mated_probes = 0
        index = self.knn.build_index(enrolled_embeddings)
        for start in range(0, len(probe_labels), self.probe_chunk):
            stop = start + self.probe_chunk
            scores, ranking = index.search(probe_embeddings[start:stop], len(enrolled_labels))
            kept = np.ones_like(ranking, dtype=bool)
            if probe_ids is not None:
                kept = np.asarray(enrolled_ids)[ranking] != np.asarray(probe_ids)[start:stop, None]
                excluded += int((~kept).sum())
            same = enrolled_labels[ranking] == probe_labels[start:stop, None]
            genuine_parts.append(scores[same & kept])
            impostor_parts.append(scores[~same & kept])
            # Identification trials are the probes with a mate among the enrolled images; the ranking
            # is best first, so the first kept column is the probe's nearest enrolled image.
            mated = (same & kept).any(axis=1)
            first_kept = kept.argmax(axis=1)
            rank1_hits += int((same[np.arange(len(ranking)), first_kept] & mated).sum())
            mated_probes += int(mated.sum())
        genuine, impostor = np.concatenate(genuine_parts), np.concatenate(impostor_parts)
        if genuine.size == 0 or impostor.size == 0:
            raise ValueError(f"verification needs genuine and impostor pairs, got {genuine.size} and {impostor.size}: "
                             "every probe identity needs an enrolled image, and there must be two identities")
        return VerificationMetrics(
            operating_points=tuple(tar_at_far(genuine, impostor, far) for far in self.fars),
            rank1=100.0 * rank1_hits / mated_probes,
            num_genuine_pairs=int(genuine.size),
            num_impostor_pairs=int(impostor.size),
            num_probes=len(probe_labels),
            num_enrolled=len(enrolled_labels),
            num_mated_probes=mated_probes,
            excluded_identical_pairs=excluded,
        )

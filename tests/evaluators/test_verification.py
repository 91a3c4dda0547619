"""Verification metrics on hand-made scores and embeddings whose TAR, FAR and rank-1 are known exactly."""

import math

import numpy as np
import pytest

from evaluators import VerificationEvaluator, create_task, searchable_metrics, tar_at_far
from evaluators.verification import far_label


def unit_vectors(angles_degrees):
    """2-D unit vectors: the inner product of two of them is the cosine of their angle difference."""
    radians = np.deg2rad(np.asarray(angles_degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_tar_at_far_accepts_exactly_the_allowed_impostors():
    genuine = [0.9, 0.8, 0.7, 0.4]
    impostor = [0.95] + [0.5] * 99  # 100 impostor pairs, one of them scoring very high
    point = tar_at_far(genuine, impostor, 1e-2)  # one false accept allowed
    assert point.threshold == 0.5
    assert point.far_achieved == pytest.approx(0.01)
    assert point.tar == pytest.approx(0.75)  # 0.9, 0.8, 0.7 are above 0.5; 0.4 is not
    strict = tar_at_far(genuine, impostor, 1e-3)  # under one false accept in 100: none allowed
    assert strict.threshold == 0.95 and strict.far_achieved == 0.0 and strict.tar == 0.0


def test_tar_at_far_on_a_ladder_of_impostor_scores():
    impostor = np.arange(1000) / 1000.0  # 0.000 ... 0.999
    genuine = np.array([0.9995, 0.995, 0.985, 0.95, 0.5])
    tar_1e2 = tar_at_far(genuine, impostor, 1e-2)  # 10 impostors (0.990-0.999) may pass: threshold 0.989
    assert tar_1e2.threshold == pytest.approx(0.989)
    assert tar_1e2.far_achieved == pytest.approx(0.01)
    assert tar_1e2.tar == pytest.approx(2 / 5)
    tar_1e3 = tar_at_far(genuine, impostor, 1e-3)  # 1 impostor (0.999) may pass: threshold 0.998
    assert tar_1e3.threshold == pytest.approx(0.998) and tar_1e3.far_achieved == pytest.approx(1e-3)
    assert tar_1e3.tar == pytest.approx(1 / 5)


def test_ties_at_the_threshold_are_rejected_so_far_never_exceeds_the_target():
    point = tar_at_far([0.5, 0.6], [0.5] * 10, 0.3)  # 3 allowed, but all ten impostors tie
    assert point.far_achieved == 0.0 and point.tar == 0.5


def test_bad_far_and_empty_pairs_are_refused():
    with pytest.raises(ValueError, match="FAR must be in"):
        tar_at_far([1.0], [0.0], 0.0)
    with pytest.raises(ValueError, match="genuine and impostor"):
        tar_at_far([], [0.1], 0.1)


def test_evaluator_on_embeddings_with_known_pair_scores():
    # Two identities. Probes at 0 and 90 degrees; enrolled images at 10, 20 (identity 0) and 80,
    # 170 (identity 1). Genuine pairs: cos10, cos20 for probe 0; cos10, cos80 for probe 1.
    probes, probe_labels = unit_vectors([0, 90]), np.array([0, 1])
    enrolled, enrolled_labels = unit_vectors([10, 20, 80, 170]), np.array([0, 0, 1, 1])
    metrics = VerificationEvaluator(fars=(0.25,)).evaluate(probes, probe_labels, enrolled, enrolled_labels)
    assert metrics.num_genuine_pairs == 4 and metrics.num_impostor_pairs == 4
    # Impostor scores: cos80, cos170 (probe 0), cos80, cos70 (probe 1); one may pass: threshold cos80.
    point = metrics.operating_points[0]
    assert point.threshold == pytest.approx(math.cos(math.radians(80)), abs=1e-6)
    assert point.far_achieved == pytest.approx(0.25)
    # Genuine above cos80: cos10, cos20, cos10 (cos80 ties and is rejected).
    assert metrics.tar(0.25) == pytest.approx(75.0)
    # Probe 0's nearest is at 10 (identity 0); probe 1's nearest is at 80 (identity 1).
    assert metrics.rank1 == 100.0
    assert set(metrics.as_dict("cross")) == {"cross_tar_far_0.25", "cross_rank1"}


def test_identical_image_pairs_are_excluded_when_probe_and_enrolled_sets_overlap():
    # The same three images on both sides: without exclusion each image would match itself (score 1).
    images, labels, ids = unit_vectors([0, 30, 100]), np.array([0, 0, 1]), np.array([7, 8, 9])
    metrics = VerificationEvaluator(fars=(0.5,)).evaluate(images, labels, images, labels, ids, ids)
    assert metrics.excluded_identical_pairs == 3
    assert metrics.num_genuine_pairs == 2  # (0, 30) both ways; image 100 has no other image of its identity
    assert metrics.num_impostor_pairs == 4
    assert metrics.num_mated_probes == 2  # rank-1 only over probes whose identity has another image
    assert metrics.rank1 == 100.0


def test_rank1_skips_the_identical_image_and_counts_wrong_nearest_neighbours():
    images, labels, ids = unit_vectors([0, 40, 10, 50]), np.array([0, 0, 1, 1]), np.arange(4)
    metrics = VerificationEvaluator(fars=(0.5,)).evaluate(images, labels, images, labels, ids, ids)
    # Nearest other image: 0 -> 10 (wrong), 40 -> 50 (wrong), 10 -> 0 (wrong), 50 -> 40 (wrong).
    assert metrics.rank1 == 0.0
    assert metrics.excluded_identical_pairs == 4


def test_probes_without_any_mate_are_an_input_error():
    with pytest.raises(ValueError, match="genuine and impostor pairs"):
        VerificationEvaluator().evaluate(unit_vectors([0]), np.array([5]), unit_vectors([0, 90]), np.array([0, 1]))


def test_far_labels_and_the_verification_task_names():
    assert far_label(1e-2) == "1e-2" and far_label(1e-3) == "1e-3" and far_label(5e-3) == "5e-3"
    assert far_label(0.25) == "0.25"
    assert searchable_metrics("retrieval") == ("cross_r1", "cross_r5", "cross_map")
    assert set(searchable_metrics("verification")) == {"cross_r1", "cross_r5", "cross_map", "cross_tar_far_1e-2",
                                                      "cross_tar_far_1e-3", "cross_rank1"}


def test_verification_task_reports_rank1_equal_to_retrieval_recall_at_1():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 10)
    centres = rng.normal(size=(10, 16))
    vectors = centres[labels] + 0.8 * rng.normal(size=(100, 16))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    metrics = create_task("verification").evaluate(vectors[::2], labels[::2], vectors[1::2], labels[1::2], "cross")
    assert set(metrics) == set(searchable_metrics("verification"))
    assert metrics["cross_rank1"] == pytest.approx(metrics["cross_r1"])
    assert 0 <= metrics["cross_tar_far_1e-3"] <= metrics["cross_tar_far_1e-2"] <= 100


def test_a_probe_without_a_mate_is_left_out_of_rank1_but_its_pairs_are_impostors():
    # Probes at 0 (identity 0), 90 (identity 1) and 45 (identity 9, never enrolled).
    probes, probe_labels = unit_vectors([0, 90, 45]), np.array([0, 1, 9])
    enrolled, enrolled_labels = unit_vectors([10, 80]), np.array([0, 1])
    metrics = VerificationEvaluator(fars=(0.25,)).evaluate(probes, probe_labels, enrolled, enrolled_labels)
    assert (metrics.num_probes, metrics.num_mated_probes, metrics.probes_without_mate) == (3, 2, 1)
    assert metrics.num_genuine_pairs == 2  # cos10 twice
    assert metrics.num_impostor_pairs == 4  # cos80 twice, and the stranger's cos35 twice
    # One impostor of four may pass: the threshold is the second highest impostor score, cos35 (tied, rejected).
    point = metrics.operating_points[0]
    assert point.threshold == pytest.approx(math.cos(math.radians(35)), abs=1e-6) and point.far_achieved == 0.0
    assert metrics.rank1 == 100.0  # both mated probes find their identity first; the stranger is no trial


def test_the_verification_task_leaves_unmatched_queries_out_of_rank1_and_r1_alike():
    probes, probe_labels = unit_vectors([0, 90, 45, 200]), np.array([0, 1, 9, 0])
    enrolled, enrolled_labels = unit_vectors([10, 80, 190]), np.array([0, 1, 1])
    metrics = create_task("verification").evaluate(probes, probe_labels, enrolled, enrolled_labels, "cross")
    # Mated probes: 0 -> 10 (right), 90 -> 80 (right), 200 -> 190 (wrong): 2 of 3; the stranger is left out.
    assert metrics["cross_rank1"] == pytest.approx(200 / 3) and metrics["cross_r1"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="no query has a relevant gallery item"):
        create_task("verification").evaluate(probes[2:3], probe_labels[2:3], enrolled, enrolled_labels, "cross")

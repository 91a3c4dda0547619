"""The unlabelled alignment pool (``data.unlabelled``): images that train the query model only
through the label-free losses, beside the labelled train split.

Rules:
* the pool is the collection's images of ``data.unlabelled.classes`` that no split uses:
  Fashion-MNIST, the official train file's images of those classes outside the train split; a
  one-pool source (image folder, ORL faces, a manifest without a split column), the images of
  those classes drawn into no split. ``data.unlabelled.size`` caps it to a seeded random subset
  (not stratified: labels choose nothing but the pool's classes). User-assigned splits have no unused images: a pool there is refused.
* Labels are dropped: every pool label is ``UNLABELLED`` (-1); a loss that needs labels refuses a
  batch that carries them (``workers.training.losses.labels_of``).
* ``data.unlabelled.evaluate_classes: false`` leaves the pool's classes out of query and gallery
  (and refuses pool classes that train): a pool of classes neither trained nor evaluated.
* The protocol is class-transductive, never image-transductive: the pool may hold images of the
  classes that are evaluated (as a catalogue's own images are in production), never an evaluated
  image. ``refuse_evaluated_overlap`` checks the pool against every query and gallery split (held
  out and validation) by id and by content (a digest of the decoded pixels): an overlap is refused.
* ``data.unlabelled.agreement_size`` holds that many pool images back from training
  (``hold_back_for_agreement``: a seeded random subset, disjoint from the images that train): trials
  measure the label-free neighbour agreement on them, so ``search.metric: cross_agreement`` ranks
  candidates on the catalogue's own images of the classes it will serve, none of them trained on
  and none of them evaluated.
* A streamed collection gives a streamed pool (``ShardedImages``: read by batch from the shard
  cache); streamed and in-memory loading give the same pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from workers.datasets.errors import DataError
from workers.datasets.types import DataRequest, ImageArray, ImageSet, RetrievalData

UNLABELLED = -1
FIELD = "data.unlabelled.classes"
AGREEMENT_FIELD = "data.unlabelled.agreement_size"


def pool_classes(request: DataRequest, class_names: tuple[str, ...]) -> np.ndarray:
    """The class indices that ``data.unlabelled.classes`` names (empty: no pool); an unknown name is refused."""
    unknown = [name for name in request.unlabelled_classes if name not in class_names]
    if unknown:
        raise DataError(f"{FIELD} names classes {unknown} that the collection does not have; allowed values are "
                        f"{list(class_names)}")
    return np.array(sorted(class_names.index(name) for name in request.unlabelled_classes), dtype=np.int64)


def held_apart_classes(request: DataRequest, class_names: tuple[str, ...]) -> np.ndarray:
    """The pool's classes that query and gallery leave out (``data.unlabelled.evaluate_classes: false``)."""
    if request.unlabelled_evaluated:
        return np.zeros(0, dtype=np.int64)
    return pool_classes(request, class_names)


def unlabelled_pool(everything: ImageSet, used: np.ndarray, request: DataRequest,
                    class_names: tuple[str, ...]) -> ImageSet | None:
    """The pool drawn from ``everything`` (labelled): images of the pool classes not in ``used`` (the
    indices the splits took), capped at ``data.unlabelled.size``, their labels set to ``UNLABELLED``."""
    classes = pool_classes(request, class_names)
    if len(classes) == 0:
        return None
    labels = np.asarray(everything.labels)
    candidates = np.setdiff1d(np.flatnonzero(np.isin(labels, classes)), used)
    if len(candidates) == 0:
        raise DataError(f"{FIELD}={list(request.unlabelled_classes)}: every image of those classes is already in "
                        "the train, query or gallery split, so the pool would be empty; lower data.train_size, "
                        "data.query_size or data.gallery_size, or name other classes")
    if request.unlabelled_size is not None:
        if request.unlabelled_size > len(candidates):
            raise DataError(f"data.unlabelled.size={request.unlabelled_size} asks for more than the "
                            f"{len(candidates)} unused images of {FIELD}; lower it or unset it")
        # Not stratified: the pool's labels choose nothing but its classes.
        candidates = np.random.default_rng(request.seed).choice(candidates, request.unlabelled_size, replace=False)
    pool = everything.subset(np.sort(candidates))
    return ImageSet(pool.images, np.full(len(pool), UNLABELLED, dtype=np.int64), pool.ids)


def hold_back_for_agreement(data: RetrievalData, size: int, seed: int) -> RetrievalData:
    """``data`` with ``size`` images of its pool moved to ``data.agreement`` (a random subset drawn by
    ``seed``, in the pool's order); the rest of the pool still trains."""
    pool = data.unlabelled
    if pool is None:
        raise DataError(f"{AGREEMENT_FIELD}={size} holds back images of the unlabelled pool, and there is none; "
                        f"name its classes in {FIELD}, or unset {AGREEMENT_FIELD}")
    if size >= len(pool):
        raise DataError(f"{AGREEMENT_FIELD}={size} would hold back the whole pool of {len(pool)} images, leaving "
                        f"none to train on; lower it below {len(pool)} (e.g. {max(1, len(pool) // 10)})")
    held = np.zeros(len(pool), dtype=bool)
    held[np.random.default_rng(seed).choice(len(pool), size, replace=False)] = True
    return replace(data, unlabelled=pool.subset(np.flatnonzero(~held)), agreement=pool.subset(np.flatnonzero(held)))


def refuse_train_classes_held_apart(request: DataRequest, class_names: tuple[str, ...],
                                    train_labels: np.ndarray) -> None:
    """``evaluate_classes: false`` promises classes neither trained nor evaluated: refuse a train class among them."""
    trained = sorted(set(held_apart_classes(request, class_names).tolist()) & set(np.asarray(train_labels).tolist()))
    if trained:
        raise DataError(f"{FIELD} names train classes {[class_names[label] for label in trained]} while "
                        "data.unlabelled.evaluate_classes is false (a pool of classes neither trained nor "
                        "evaluated); name classes outside the train classes, or set evaluate_classes: true")


def image_digests(images: ImageArray, chunk: int = 1024) -> list[bytes]:
    """A digest of each image's decoded pixels, read ``chunk`` images at a time."""
    digests = []
    for start in range(0, len(images), chunk):
        batch = np.ascontiguousarray(images[start : start + chunk])
        digests.extend(hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in batch)
    return digests


def refuse_evaluated_overlap(pool: ImageSet | None, evaluated: Mapping[str, ImageSet]) -> None:
    """Refuse a pool that holds an image of an evaluated split (``evaluated``: split name -> images), by
    id or by content (module rules)."""
    if pool is None:
        return
    pool_ids = set(np.asarray(pool.ids).tolist())
    pool_digests = {digest: image_id for digest, image_id in zip(image_digests(pool.images), pool.ids)}
    for split, images in evaluated.items():
        shared = sorted(pool_ids & set(np.asarray(images.ids).tolist()))
        same = [(pool_digests[digest], image_id) for digest, image_id in zip(image_digests(images.images), images.ids)
                if digest in pool_digests]
        if shared or same:
            shown = shared[:5] if shared else [f"{pool_id} = {image_id}" for pool_id, image_id in same[:5]]
            raise DataError(
                f"the unlabelled pool ({FIELD}) holds {len(shared) or len(same)} image(s) of the evaluated {split} "
                f"split ({'same id' if shared else 'same pixels'}: {shown}): the protocol may train on the evaluated "
                "classes' other images, never on an evaluated image. Remove those images from the pool's source "
                f"(or the duplicates from the collection), or name other classes in {FIELD}")

"""The data splits of a search as MLflow dataset inputs: described, never copied.

``data_split_inputs`` gives one entry per split (train, query, gallery; with a validation split
also validation_query and validation_gallery) in the JSON form the journal stores; ``dataset_input`` rebuilds the MLflow entity when the journal sends it. An entry:
name ``<data name>-<split>``; digest, 16 hex digits of SHA-256 over the split's image shape,
labels and ids (``split_digest``: another subset, order or file changes it); source, the data
folder (type ``local``) or, without one, the built-in set's name (type ``cmpnas``); schema, its
image and label tensors; profile, its counts, image size and protocol. ``split_digest`` is also
the identity an export records of the data it was measured on (``orchestrator.export.data_identity``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.data.schema import TensorDatasetSchema
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.types import Schema, TensorSpec

from orchestrator.tracking.tags import DATASET_CONTEXT_TAG
from workers.datasets.types import RETRIEVAL_SPLITS, ImageSet, RetrievalData

# A dataset's source type when the data has no folder (a built-in set found in its standard places).
BUILTIN_SOURCE_TYPE = "cmpnas"


def named_splits(data: RetrievalData, held_out: RetrievalData | None = None) -> list[tuple[str, ImageSet]]:
    """The splits of a search by their dataset-input context: train, query and gallery; with a
    validation split (``data`` the selection view, ``held_out`` the full data) train (less the
    validation images), validation_query, validation_gallery, and the held-out query and gallery."""
    # The unlabelled pool (data.unlabelled), when there is one, is logged after them as ``unlabelled``, and
    # its images held back for the agreement (data.unlabelled.agreement_size) as ``unlabelled_agreement``.
    pool = [(context, images) for context, images in (("unlabelled", data.unlabelled),
                                                      ("unlabelled_agreement", data.agreement)) if images is not None]
    if held_out is None:
        return [(split, getattr(data, split)) for split in RETRIEVAL_SPLITS] + pool
    return [("train", data.train), ("validation_query", data.query), ("validation_gallery", data.gallery),
            ("query", held_out.query), ("gallery", held_out.gallery)] + pool


def data_split_inputs(data: RetrievalData, source: str, root: str | None,
                      held_out: RetrievalData | None = None) -> list[dict[str, str]]:
    """The train, query and gallery splits as MLflow dataset inputs, in the journal's JSON form.
    With a validation split, ``data`` is the selection view and ``held_out`` the full data: the
    view's query/gallery are logged as ``validation_query``/``validation_gallery`` and the held-out
    splits as ``query``/``gallery``.

    ``source``/``root``: ``data.source`` and ``data.root``. Each split is described, never copied:
    name ``<data name>-<split>``; digest, a hash of its image shape, labels and ids (another
    subset, order or file changes it); source, the data folder (type ``local``) or, without one,
    the built-in set's name (type ``cmpnas``); schema, its image and label tensors; profile, its
    counts, image size and protocol (the train split also its channel statistics and bad files)."""
    if root:
        source_type, where = "local", {"uri": str(Path(root).expanduser().resolve()), "data_source": source}
    else:
        source_type, where = BUILTIN_SOURCE_TYPE, {"data_source": source}
    inputs = []
    for split, images in named_splits(data, held_out):
        shape = tuple(int(size) for size in images.images.shape[1:])
        labels = np.asarray(images.labels, dtype=np.int64)
        schema = TensorDatasetSchema(Schema([TensorSpec(np.dtype(np.uint8), (-1, *shape), "images")]),
                                     Schema([TensorSpec(np.dtype(np.int64), (-1,), "labels")]))
        profile: dict[str, Any] = {
            "num_images": len(images), "num_classes": int(len(np.unique(labels))),
            "dataset_classes": data.num_classes, "image_size": shape[-1], "channels": shape[0],
            "protocol": data.protocol, "streamed": images.streamed,
        }
        if split == "train":
            profile.update(mean=list(data.mean), std=list(data.std), bad_files=len(data.bad_files))
        inputs.append({
            "name": f"{data.name}-{split}", "digest": split_digest(shape, labels, images.ids),
            "source_type": source_type, "source": json.dumps(where, sort_keys=True),
            "schema": json.dumps(schema.to_dict()), "profile": json.dumps(profile, sort_keys=True),
            "context": split,
        })
    return inputs


def split_digest(shape: tuple[int, ...], labels: np.ndarray, ids) -> str:
    """16 hex digits of SHA-256 over a split's image shape, labels and ids (MLflow allows 36)."""
    digest = hashlib.sha256(json.dumps(list(shape)).encode())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update("\n".join(str(image_id) for image_id in ids).encode())
    return digest.hexdigest()[:16]


def dataset_input(fields: dict[str, str]) -> DatasetInput:
    """The MLflow entity of one entry of ``data_split_inputs`` (as the journal stored it)."""
    dataset = Dataset(name=fields["name"], digest=fields["digest"], source_type=fields["source_type"],
                      source=fields["source"], schema=fields.get("schema"), profile=fields.get("profile"))
    return DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT_TAG, fields["context"])])

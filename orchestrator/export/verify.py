"""``cmpnas verify-compat``: is an exported query model still compatible with this gallery model?"""

from __future__ import annotations

from pathlib import Path

import torch

from evaluators import RetrievalMetrics
from orchestrator.config import CmpnasConfig
from orchestrator.export.checks import cross_model_metrics, embed_gallery_split, onnx_session
from orchestrator.export.errors import ExportError
from orchestrator.export.package import read_manifest
from workers.checkpoint import CheckpointError
from workers.gallery import load_gallery


def verify_compatibility(query_model: Path, gallery_checkpoint: Path, config: CmpnasConfig,
                         force: bool = False) -> tuple[dict, RetrievalMetrics]:
    """(manifest, cross-model metrics recomputed on the data of ``config``)."""
    from orchestrator.search_inputs import load_data

    manifest = read_manifest(Path(query_model))
    try:
        gallery = load_gallery(gallery_checkpoint, torch.device("cpu"))
    except CheckpointError as error:
        raise ExportError(str(error)) from error
    query_dim, gallery_dim = manifest["embedding"]["dim"], gallery.model.arch.embed_dim
    if query_dim != gallery_dim:  # not even --force: the two embeddings cannot be compared at all
        raise ExportError(
            f"gallery checkpoint {gallery_checkpoint} embeds into {gallery_dim} dimensions, the query model "
            f"{query_model} into {query_dim}: they cannot be compatible. Use the gallery checkpoint the model "
            "was searched against"
        )
    expected = manifest["gallery"]["fingerprint"]
    if gallery.fingerprint != expected and not force:
        raise ExportError(
            f"gallery checkpoint {gallery_checkpoint} has fingerprint {gallery.fingerprint[:12]}, the query model "
            f"was made compatible with {expected[:12]} ({manifest['gallery']['model']}): its embeddings would not be "
            "comparable. Use the matching gallery checkpoint, or --force to measure anyway"
        )
    data = load_data(config)
    wanted = manifest["input"]
    if (data.in_chans, data.image_size) != (wanted["channels"], wanted["height"]):
        raise ExportError(f"the data has {data.in_chans}-channel {data.image_size}px images, the model expects "
                          f"{wanted['channels']}-channel {wanted['height']}px; set data.* to match")
    metrics = cross_model_metrics(onnx_session(Path(query_model)), data, embed_gallery_split(gallery, data))
    return manifest, metrics

"""``cmpnas verify-compat``: is an exported query model still compatible with this gallery model?"""

from __future__ import annotations

from pathlib import Path

from evaluators import RetrievalMetrics
from orchestrator.config import CmpnasConfig
from orchestrator.export.checks import cross_model_metrics, embed_gallery_split, onnx_session
from orchestrator.export.errors import ExportError
from orchestrator.export.package import read_manifest
from orchestrator.gallery_setup import open_existing_gallery
from workers.checkpoint import CheckpointError


def verify_compatibility(query_model: Path, gallery_path: Path, config: CmpnasConfig,
                         force: bool = False) -> tuple[dict, RetrievalMetrics]:
    """(manifest, cross-model metrics recomputed on the data of ``config``); ``gallery_path`` is the
    gallery model in production, of any gallery.source (``config.gallery.source`` says which)."""
    from orchestrator.search_inputs import load_data

    manifest = read_manifest(Path(query_model))
    data = load_data(config)
    try:
        gallery = open_existing_gallery(config, data, Path(gallery_path))
    except CheckpointError as error:
        raise ExportError(str(error)) from error
    query_dim, gallery_dim = manifest["embedding"]["dim"], gallery.embed_dim
    if query_dim != gallery_dim:  # not even --force: the two embeddings cannot be compared at all
        raise ExportError(
            f"gallery model {gallery_path} embeds into {gallery_dim} dimensions, the query model "
            f"{query_model} into {query_dim}: they cannot be compatible. Use the gallery model the query model "
            "was searched against"
        )
    expected = manifest["gallery"]["fingerprint"]
    if gallery.fingerprint != expected and not force:
        raise ExportError(
            f"gallery model {gallery_path} has fingerprint {gallery.fingerprint[:12]}, the query model "
            f"was made compatible with {expected[:12]} ({manifest['gallery']['model']}): its embeddings would not be "
            "comparable. Use the matching gallery model, or --force to measure anyway"
        )
    wanted = manifest["input"]
    if (data.in_chans, data.image_size) != (wanted["channels"], wanted["height"]):
        raise ExportError(f"the data has {data.in_chans}-channel {data.image_size}px images, the model expects "
                          f"{wanted['channels']}-channel {wanted['height']}px; set data.* to match")
    metrics = cross_model_metrics(onnx_session(Path(query_model)), data, embed_gallery_split(gallery, data))
    return manifest, metrics

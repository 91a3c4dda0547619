"""``cmpnas verify-compat``: is an exported query model still compatible with this gallery model?

Measured on the data the export recorded (``compatibility.json``, key ``data``; see
``orchestrator.export.data_identity``): reloaded from the manifest (``recorded_data=True``, the CLI
without ``--config``), or given by the configuration and checked against the recorded identity,
a mismatch refused unless ``force``. Never silently on other data of the same image shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from evaluators import RetrievalMetrics
from orchestrator.config import CmpnasConfig
from orchestrator.export.checks import cross_model_metrics, embed_gallery_split, onnx_session
from orchestrator.export.data_identity import data_identity, describe_data, identity_differences, recorded_data_config
from orchestrator.export.errors import ExportError
from orchestrator.export.package import MANIFEST_FILE, read_manifest
from orchestrator.setup.data import load_search_data
from orchestrator.setup.gallery import open_existing_gallery
from workers.storage.checkpoint import CheckpointError


@dataclass(frozen=True)
class VerifyOptions:
    """Which data ``verify_compatibility`` measures on, and what it lets pass: with ``recorded_data``,
    the data the manifest records (``data_overrides``: location fields over it), else the
    configuration's, refused when its identity differs from the recorded one unless ``force``
    (which also lets another gallery fingerprint pass)."""

    force: bool = False
    recorded_data: bool = False
    data_overrides: Sequence[str] = ()


def verify_compatibility(query_model: Path, gallery_path: Path, config: CmpnasConfig,
                         options: VerifyOptions = VerifyOptions(),
                         log: Callable[[str], None] = lambda message: None) -> tuple[dict, RetrievalMetrics]:
    """(manifest, cross-model metrics recomputed); ``gallery_path`` is the gallery model in production,
    of any gallery.source (``config.gallery.source`` says which). ``log`` receives the line saying
    which data is measured on."""
    force, recorded_data, data_overrides = options.force, options.recorded_data, options.data_overrides
    manifest = read_manifest(Path(query_model))
    recorded = manifest.get("data")
    if recorded_data:
        if recorded is None:
            raise ExportError(f"{Path(query_model) / MANIFEST_FILE} does not record the data it was checked on (an "
                              "export older than cmpnas's data identity): pass --config with the search's data "
                              "(its config.json), or export the model again")
        config = recorded_data_config(config, recorded["config"], data_overrides,
                                      source=f"the data recorded in {Path(query_model) / MANIFEST_FILE}")
    search_data = load_search_data(config)
    data = search_data.reported
    identity = data_identity(config, search_data)
    log(describe_data(identity))
    if recorded is None:
        log("the manifest records no data identity (an older export): the data cannot be checked")
    else:
        differences = identity_differences(recorded, identity)
        if differences and not force:
            raise ExportError(
                f"the data is not the data {query_model} was exported and checked on: {'; '.join(differences)}. "
                "Leave out --config to measure on the recorded data, point data.root at it, or --force to measure "
                "anyway")
        if differences:
            log(f"--force: measuring on other data than recorded ({'; '.join(differences)})")
    try:
        # The manifest's fingerprint is checked before a source whose loading runs code loads the file.
        gallery = open_existing_gallery(config, data, Path(gallery_path),
                                        expected_fingerprint=None if force else manifest["gallery"]["fingerprint"])
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

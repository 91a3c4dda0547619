"""``cmpnas export``: select candidates, package them, check them, and only then record them.

Every check runs on a staging copy before the first write to the tracking store or the output
folder, so a failed export leaves both as they were.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator import cmpnas_version
from orchestrator.config import validate_config
from orchestrator.export.checks import (
    check_parity, check_recorded_recall, cross_model_metrics, embed_gallery_split, onnx_session,
)
from orchestrator.export.errors import ExportError
from orchestrator.export.package import MANIFEST_FILE, DeployableQueryModel, build_manifest, load_candidate, write_formats
from orchestrator.export.registry import register_export
from orchestrator.export.selection import select_runs
from orchestrator.gallery_setup import open_existing_gallery
from orchestrator.tags import GALLERY_FINGERPRINT_TAG
from orchestrator.tracking import SearchTracker
from workers.checkpoint import CheckpointError
from workers.datasets import RetrievalData
from workers.gallery_sources import GalleryModel
from workers.trial_report import MODEL_FILE, SPEC_FILE

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    tracking_uri: str
    experiment: str
    model_name: str
    output_dir: Path | None = None
    search_run_id: str | None = None
    run_id: str | None = None
    max_mflops: float | None = None
    # The gallery model (file, or folder of embeddings) of the search's gallery.source; None: the search's own.
    gallery_path: Path | None = None
    register: bool = True


@dataclass(frozen=True)
class ExportedModel:
    run_id: str
    arch_id: str
    folder: Path
    manifest: dict
    parity: dict[str, float]
    onnx_cross_r1: float
    version: str | None = None
    alias: str | None = None


def export_candidates(request: ExportRequest, log: Log = print) -> list[ExportedModel]:
    from orchestrator.search_inputs import load_data

    try:
        tracker = SearchTracker.open_existing(request.tracking_uri, request.experiment)
    except LookupError as error:
        raise ExportError(str(error)) from error
    search, runs = select_runs(tracker, request.search_run_id, request.run_id, request.max_mflops)
    config = _search_config(tracker, search.info.run_id)
    data = load_data(config)
    gallery = _search_gallery(config, data, request.gallery_path, search)
    output_dir = Path(request.output_dir or Path(config.output_dir) / "export").resolve()
    log(f"exporting {len(runs)} candidate(s) of search {search.info.run_id} to {output_dir}")

    gallery_embeddings = embed_gallery_split(gallery, data)
    input_shape = (data.in_chans, data.image_size, data.image_size)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_dir))
    try:
        staged = []
        for run in runs:
            source = Path(tracker.client.download_artifacts(run.info.run_id, "model", str(staging / run.info.run_id)))
            spec, network = load_candidate(source / MODEL_FILE, source / SPEC_FILE)
            # The query model's preprocessing is the data's, as in training; the gallery model has its own.
            model = DeployableQueryModel(network, data.mean, data.std, spec.resolution).eval()
            folder = staging / spec.arch_id
            folder.mkdir()
            write_formats(model, folder, input_shape)
            parity = check_parity(model, folder, input_shape)
            measured = cross_model_metrics(onnx_session(folder), data, gallery_embeddings)
            check_recorded_recall(measured, run.data.metrics["final_cross_r1"], f"candidate {spec.arch_id}")
            manifest = build_manifest(spec=spec, candidate_run=run, search_run=search, image_size=data.image_size,
                                      mean=data.mean, std=data.std, gallery=gallery.identity(),
                                      version=cmpnas_version(), folder=folder)
            (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            log(f"  {spec.arch_id}: parity {max(parity.values()):.1e}, ONNX cross-model R@1 "
                f"{measured.recall_at_1:.2f} (recorded {run.data.metrics['final_cross_r1']:.2f})")
            staged.append((run, folder, manifest, parity, measured.recall_at_1))

        exported = []
        for run, folder, manifest, parity, r1 in staged:
            final = output_dir / manifest["arch_id"]
            if final.exists():
                shutil.rmtree(final)
            folder.rename(final)
            version = alias = None
            if request.register:
                version, alias = register_export(tracker, request.model_name, run, final, manifest, request.max_mflops)
            exported.append(ExportedModel(run.info.run_id, manifest["arch_id"], final, manifest, parity, r1,
                                          version, alias))
        return exported
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _search_config(tracker: SearchTracker, search_run_id: str):
    folder = tempfile.mkdtemp(prefix="cmpnas-config-")
    try:
        path = tracker.client.download_artifacts(search_run_id, "config.json", folder)
        return validate_config(json.loads(Path(path).read_text()), source=f"config.json of run {search_run_id}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _search_gallery(config, data: RetrievalData, path: Path | None, search) -> GalleryModel:
    try:
        gallery = open_existing_gallery(config, data, path)
    except CheckpointError as error:
        raise ExportError(f"gallery model of the search: {error}") from error
    recorded = search.data.tags.get(GALLERY_FINGERPRINT_TAG)
    if gallery.fingerprint != recorded:
        raise ExportError(f"gallery model {path or config.gallery_path} has fingerprint {gallery.fingerprint[:12]}, but "
                          f"search {search.info.run_id} ran against {str(recorded)[:12]}: pass the search's gallery "
                          "model (--gallery)")
    return gallery

"""``cmpnas export``: select candidates, package them, check them, and only then record them.

Every check runs on a staging copy before the first write to the tracking store or the output
folder, so a failed export leaves both as they were. The output folder is held with the output lock
for the export, and a checked candidate is swapped in whole (``orchestrator.export.publish``).

The data is the search's, from its recorded configuration, with only its location overridable
(``ExportRequest.data_overrides``; ``orchestrator.export.data_identity``): the export says which
data it evaluates on (one line), refuses data whose split digests differ from the search's dataset
inputs, and records the data's identity in the manifest. The gallery model is linked, not copied:
``gallery.json`` (identity and location) is part of every export folder and of its manifest's files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from orchestrator.common.credentials import redact_uri
from orchestrator.export.checks import (
    check_parity,
    check_recorded_recall,
    cross_model_metrics,
    embed_gallery_split,
    onnx_session,
)
from orchestrator.export.data_identity import (
    apply_data_overrides,
    data_identity,
    describe_data,
    search_split_differences,
)
from orchestrator.export.errors import ExportError
from orchestrator.export.publish import staging_in, swap_in
from orchestrator.export.package import (
    GALLERY_FILE,
    MANIFEST_FILE,
    DeployableQueryModel,
    MeasuredWith,
    build_manifest,
    gallery_record,
    load_candidate,
    recorded_cross_r1,
    write_formats,
)
from orchestrator.export.registry import Registration, ServedFlavour, register_export
from orchestrator.export.selection import select_runs
from orchestrator.setup.data import load_search_data
from orchestrator.setup.gallery import open_existing_gallery
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import GALLERY_FINGERPRINT_TAG
from workers.datasets import RetrievalData
from workers.gallery.sources import GalleryModel
from workers.storage.checkpoint import CheckpointError
from workers.trial_report import MODEL_FILE, SPEC_FILE

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    tracking_uri: str
    experiment: str
    model_name: str
    output_dir: Path | None = None
    search_run_id: str | None = None
    # One candidate run to export instead of the front: a full run id or a unique prefix of one.
    candidate_run_id: str | None = None
    max_mflops: float | None = None
    # The gallery model (file, or folder of embeddings) of the search's gallery.source; None: the search's own.
    gallery_path: Path | None = None
    register: bool = True
    # ``data.<field>=value`` overrides of where the data is read from, applied over the search's recorded
    # configuration (``data_identity.DATA_LOCATION_FIELDS``; others are refused).
    data_overrides: tuple[str, ...] = ()
    # The opt-in to a TorchScript gallery model, from this command's user: the recorded configuration's
    # gallery.allow_torchscript is replaced by it, since whoever can write to the tracking server wrote that one.
    allow_torchscript: bool = False
    # The python_function flavour of the registered MLflow models (``registry.ServedFlavour``); None: ONNX's own.
    # `cmpnas export` hands in the search model of ``orchestrator.serving.pyfunc``.
    served_flavour: ServedFlavour | None = None


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
    # The MLflow logged model (onnx flavour) of the export, the registry version's source.
    model_id: str | None = None


def export_candidates(request: ExportRequest, log: Log = print) -> list[ExportedModel]:
    """Package, check and (with ``request.register``) register the candidates ``request`` selects."""
    tracker = SearchTracker.open_existing(request.tracking_uri, request.experiment)
    search, runs = select_runs(tracker, request.search_run_id, request.candidate_run_id, request.max_mflops)
    config = _search_config(tracker, search.info.run_id, request)
    search_data = load_search_data(config)
    # Measured on the query/gallery splits the search reported: the held-out ones with a validation split.
    data = search_data.reported
    identity = data_identity(config, search_data)
    log(describe_data(identity))
    _check_search_splits(search, identity)
    gallery = _search_gallery(config, data, request.gallery_path, search)
    gallery_json = gallery_record(gallery.identity(), _location(request.gallery_path or config.gallery_path),
                                  search.info.run_id)
    output_dir = Path(request.output_dir or Path(config.output_dir) / "export").resolve()
    log(f"exporting {len(runs)} candidate(s) of search {search.info.run_id} to {output_dir}")
    measured = MeasuredWith(data.image_size, data.mean, data.std, identity,
                            {**gallery.identity(), "location": gallery_json["location"]})
    target = _Target(tracker, search, data, embed_gallery_split(gallery, data), gallery_json, request.served_flavour)
    with staging_in(output_dir, log) as staging:
        staged = [_stage(run, target, measured, staging, log) for run in runs]
        return [_publish(entry, output_dir, tracker, request) for entry in staged]


@dataclass(frozen=True)
class _Target:
    """What every candidate of an export is checked against: the search, its data and gallery embeddings."""

    tracker: SearchTracker
    search: object
    data: RetrievalData
    gallery_embeddings: np.ndarray
    gallery_json: dict
    served_flavour: ServedFlavour | None = None


@dataclass(frozen=True)
class _Staged:
    run: object
    folder: Path
    manifest: dict
    parity: dict[str, float]
    onnx_cross_r1: float


def _stage(run, target: _Target, measured: MeasuredWith, staging: Path, log: Log) -> _Staged:
    """One candidate packaged in the staging folder and checked: format parity, recorded R@1."""
    data = target.data
    source = Path(target.tracker.client.download_artifacts(run.info.run_id, "model", str(staging / run.info.run_id)))
    spec, network = load_candidate(source / MODEL_FILE, source / SPEC_FILE)
    # The query model's preprocessing is the data's, as in training; the gallery model has its own.
    model = DeployableQueryModel(network, data.mean, data.std, spec.resolution).eval()
    folder = staging / spec.arch_id
    folder.mkdir()
    input_shape = (data.in_chans, data.image_size, data.image_size)
    write_formats(model, folder, input_shape)
    parity = check_parity(model, folder, input_shape)
    measured_r1 = cross_model_metrics(onnx_session(folder), data, target.gallery_embeddings)
    recorded_r1 = recorded_cross_r1(run.data.metrics)
    check_recorded_recall(measured_r1, recorded_r1, f"candidate {spec.arch_id}")
    (folder / GALLERY_FILE).write_text(json.dumps(target.gallery_json, indent=2, sort_keys=True))
    manifest = build_manifest(spec, (run, target.search), measured, folder)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    if target.served_flavour is not None:
        target.served_flavour.check(folder, manifest)
    log(f"  {spec.arch_id}: parity {max(parity.values()):.1e}, ONNX cross-model R@1 "
        f"{measured_r1.recall_at_1:.2f} (recorded {recorded_r1:.2f})")
    return _Staged(run, folder, manifest, parity, measured_r1.recall_at_1)


def _publish(staged: _Staged, output_dir: Path, tracker: SearchTracker, request: ExportRequest) -> ExportedModel:
    """A checked candidate moved into ``output_dir`` and, with ``request.register``, registered."""
    final = output_dir / staged.manifest["arch_id"]
    swap_in(staged.folder, final)
    version = alias = model_id = None
    if request.register:
        registration = Registration(request.model_name, request.max_mflops, request.served_flavour)
        version, alias, model_id = register_export(tracker, registration, staged.run, final, staged.manifest)
    return ExportedModel(staged.run.info.run_id, staged.manifest["arch_id"], final, staged.manifest, staged.parity,
                         staged.onnx_cross_r1, version, alias, model_id)


def _search_config(tracker: SearchTracker, search_run_id: str, request: ExportRequest):
    """The search's recorded configuration, with the request's data location overrides applied and its
    own ``allow_torchscript`` in place of the recorded one (the recorded one is not this user's consent)."""
    folder = tempfile.mkdtemp(prefix="cmpnas-config-")
    try:
        path = tracker.client.download_artifacts(search_run_id, "config.json", folder)
        tree = json.loads(Path(path).read_text())
        if isinstance(tree, dict) and isinstance(tree.get("gallery"), dict):
            tree["gallery"] = {**tree["gallery"], "allow_torchscript": request.allow_torchscript}
        return apply_data_overrides(tree, request.data_overrides, source=f"config.json of run {search_run_id}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_search_splits(search, identity: dict) -> None:
    """The data must be the search's: its split digests equal the ones of the parent run's dataset inputs."""
    differing = search_split_differences(search, identity)
    if differing:
        raise ExportError(f"the data at {identity['root'] or 'the standard place'} is not the data search "
                          f"{search.info.run_id} ran on: the digests (labels and ids) of split(s) {'; '.join(differing)} "
                          "differ. Point data.root (--set data.root=...) at the data the search used")


def _location(path) -> str:
    """Where the gallery model is: an absolute path, or a URI without credentials."""
    text = str(path)
    return redact_uri(text) if "://" in text else str(Path(text).expanduser().resolve())


def _search_gallery(config, data: RetrievalData, path: Path | None, search) -> GalleryModel:
    recorded = search.data.tags.get(GALLERY_FINGERPRINT_TAG)
    try:
        # The recorded fingerprint is checked before a source whose loading runs code (TorchScript) loads the file.
        gallery = open_existing_gallery(config, data, path, expected_fingerprint=recorded)
    except CheckpointError as error:
        raise ExportError(f"gallery model of the search: {error}") from error
    if gallery.fingerprint != recorded:
        raise ExportError(f"gallery model {path or config.gallery_path} has fingerprint {gallery.fingerprint[:12]}, but "
                          f"search {search.info.run_id} ran against {str(recorded)[:12]}: pass the search's gallery "
                          "model (--gallery)")
    return gallery

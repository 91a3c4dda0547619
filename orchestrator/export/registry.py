"""The MLflow records of an export: the files on the candidate run, the ONNX model as an MLflow model
of that run, and a registry version of that model.

Rules (all written only after every check passed, see ``orchestrator.export.pipeline``):
* the export folder is logged on the candidate run under ``export/`` (ONNX, TorchScript,
  safetensors, the manifest and ``gallery.json``);
* the ONNX file becomes an MLflow 3 logged model with the ``onnx`` flavour (``log_onnx_model``):
  named by its arch id, created with ``source_run_id`` = the candidate run and logged as an output
  of it (the run's page lists it), with its signature (float32 images N x C x H x W in, pixel / 255;
  float32 embeddings N x D out), the manifest beside ``MLmodel``, and ONNX's own pip requirements
  (never inferred in a subprocess). It is READY once its files are uploaded, else FAILED;
* the registry version's source is that model (``models:/<model_id>``, with its ``model_id``), and
  the model lists its versions (``MODEL_VERSIONS_TAG``, as ``mlflow.register_model`` writes it): the
  registry, the run and the logged model point at one another. The version is tagged with the
  gallery fingerprint and aliased ``pareto-<kFLOPs>kflops`` or ``budget-<kFLOPs>kflops``;
* the model's ``python_function`` flavour (what ``mlflow models serve`` and ``mlflow.pyfunc`` run) is
  ONNX's own (float32 tensors in, embeddings out) unless the export is handed a ``ServedFlavour``:
  ``cmpnas export`` hands in the search model of ``orchestrator.serving.pyfunc`` (images in, gallery
  ids out), which saves the model with the same ``onnx`` flavour beside its own. It is handed in,
  never imported: the serving side sits above export. Its ``check`` runs while the candidate is
  staged, before anything is written;
* the gallery model the query model is compatible with is linked, never uploaded (it may be many
  GB, it is the same for every export of a search, and it belongs to whoever serves the gallery):
  its fingerprint, source and location (a path or URI as export found it, ``redact_uri``-ed) are
  tags of the logged model and the registry version (``model_tags``) and entries of the logged
  model's metadata, and ``gallery.json`` (its identity and location) is logged with the export
  and beside ``MLmodel``. The fingerprint is the check: any copy of the gallery model can be
  proved to be the one (``cmpnas verify-compat``, ``cmpnas query``);
* MLflow 3.17's database registry resolves ``models:/<model_id>`` through the process's tracking
  URI, not the client's: it is pointed at the search's store for that one call and restored after
  (``_process_tracking_uri``), so nothing else in the process sees it.

Export is a command of its own, not a search: it writes through the client, without the journal.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import mlflow.onnx
import numpy as np
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.types import Schema, TensorSpec

from orchestrator.export.package import GALLERY_FILE, MANIFEST_FILE, ONNX_FILE
from orchestrator.results.budget import registry_alias
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import GALLERY_FINGERPRINT_TAG, GALLERY_SOURCE_TAG, MODEL_VERSIONS_TAG

# The logged model's type, searchable in the experiment's Models tab.
MODEL_TYPE = "cmpnas-query-model"


# Tag and metadata key of the gallery model's location (no *_TAG constant: it is no run tag).
GALLERY_LOCATION_KEY = "gallery_location"


def model_tags(manifest: dict) -> dict[str, str]:
    """What the logged model and its registry version are found by, and the gallery model they
    are compatible with (fingerprint, source, location)."""
    gallery = manifest["gallery"]
    return {GALLERY_FINGERPRINT_TAG: gallery["fingerprint"], GALLERY_SOURCE_TAG: gallery["source"],
            GALLERY_LOCATION_KEY: gallery.get("location") or "", "arch_id": manifest["arch_id"],
            "mflops": f"{manifest['cost']['mflops']:.4f}",
            "cross_r1": f"{manifest['metrics']['cross_model']['r1']:.2f}"}


def onnx_signature(manifest: dict) -> ModelSignature:
    """The exported graph's input and output, as the manifest describes them."""
    wanted = manifest["input"]
    images = TensorSpec(np.dtype(np.float32), (-1, wanted["channels"], wanted["height"], wanted["width"]), "images")
    embeddings = TensorSpec(np.dtype(np.float32), (-1, manifest["embedding"]["dim"]), "embeddings")
    return ModelSignature(inputs=Schema([images]), outputs=Schema([embeddings]))


class ServedFlavour(Protocol):
    """Another ``python_function`` flavour for an export's MLflow model than ONNX's own."""

    def check(self, folder: Path, manifest: dict) -> None:
        """Refuse the staged export ``folder`` (a ``CmpnasError`` naming the fix) before anything is written."""

    def save(self, path: Path, folder: Path, manifest: dict, mlflow_model: Model) -> None:
        """Save the MLflow model of export ``folder`` at ``path`` (not yet there) with ``add_onnx_flavour``'s
        ``onnx`` flavour and the python_function flavour, completing ``mlflow_model`` (ids and metadata set)."""


@dataclass(frozen=True)
class Registration:
    """Where and how exports are registered: the registered model's name, the budget of a budget export
    (its alias), and the served flavour (None: ONNX's own)."""

    model_name: str
    budget: float | None = None
    flavour: ServedFlavour | None = None


def add_onnx_flavour(mlflow_model: Model, data: str) -> None:
    """The ``onnx`` flavour as ``mlflow.onnx.save_model`` writes it, for the ONNX file at ``data`` (relative
    to the model folder), where another module writes the ``python_function`` flavour."""
    import onnx

    mlflow_model.add_flavor(mlflow.onnx.FLAVOR_NAME, onnx_version=onnx.__version__, data=data,
                            providers=list(mlflow.onnx.ONNX_EXECUTION_PROVIDERS), onnx_session_options=None,
                            code=None)


def log_onnx_model(tracker: SearchTracker, candidate_run, folder: Path, manifest: dict,
                   flavour: ServedFlavour | None = None) -> str:
    """The export's ONNX file as an MLflow logged model (``onnx`` flavour) of its candidate run, served
    by ``flavour`` (None: ONNX's own python_function flavour); its id."""
    import onnx

    client = tracker.client
    run_id = candidate_run.info.run_id
    model = client.create_logged_model(
        candidate_run.info.experiment_id, name=manifest["arch_id"], source_run_id=run_id,
        tags=model_tags(manifest), params=dict(candidate_run.data.params), model_type=MODEL_TYPE)
    try:
        with tempfile.TemporaryDirectory(prefix="cmpnas-onnx-model-") as scratch:
            local = Path(scratch) / "model"
            description = Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                model_id=model.model_id, metadata=_model_metadata(manifest))
            if flavour is None:
                mlflow.onnx.save_model(
                    onnx.load(str(folder / ONNX_FILE)), str(local), mlflow_model=description,
                    signature=onnx_signature(manifest), pip_requirements=mlflow.onnx.get_default_pip_requirements(),
                    save_as_external_data=False)
            else:
                flavour.save(local, folder, manifest, description)
            for name in (MANIFEST_FILE, GALLERY_FILE):
                shutil.copyfile(folder / name, local / name)
            client.log_model_artifacts(model.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id


def _model_metadata(manifest: dict) -> dict:
    return {"cmpnas_manifest_version": manifest["manifest_version"], "arch_id": manifest["arch_id"],
            "gallery_fingerprint": manifest["gallery"]["fingerprint"], "gallery_source": manifest["gallery"]["source"],
            GALLERY_LOCATION_KEY: manifest["gallery"].get("location"), "input_scale": manifest["input"]["scale"]}


def register_export(tracker: SearchTracker, registration: Registration, candidate_run, folder: Path,
                    manifest: dict) -> tuple[str, str, str]:
    """Record an export (see the module's rules); returns (registry version, alias, logged model id)."""
    client = tracker.client
    model_name = registration.model_name
    run_id = candidate_run.info.run_id
    client.log_artifacts(run_id, str(folder), "export")
    model_id = log_onnx_model(tracker, candidate_run, folder, manifest, registration.flavour)
    try:
        client.create_registered_model(model_name, description="cmpnas query models, compatible with a gallery model")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    with _process_tracking_uri(tracker.tracking_uri):
        version = client.create_model_version(
            model_name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id, tags=model_tags(manifest),
            description=f"{manifest['arch_id']}: {manifest['cost']['mflops']:.2f} MFLOPs, cross-model R@1 "
                        f"{manifest['metrics']['cross_model']['r1']:.2f}",
        )
    listed = json.loads(client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG) or "[]")
    client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(
        [*listed, {"name": model_name, "version": str(version.version)}])})
    alias = registry_alias(manifest["cost"]["mflops"], registration.budget)
    client.set_registered_model_alias(model_name, alias, version.version)
    return version.version, alias, model_id


@contextmanager
def _process_tracking_uri(uri: str) -> Iterator[None]:
    """The process's tracking URI set to ``uri`` for one registry call, then restored with
    ``MLFLOW_TRACKING_URI`` as it was (MLflow's own helper would clear a variable the user set)."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved

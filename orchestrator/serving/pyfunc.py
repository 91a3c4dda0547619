"""The search model: an export as an MLflow ``python_function`` model that answers image search, so that
``mlflow models serve -m models:/NAME@alias --env-manager local`` searches the gallery.

Rules:

* one MLflow model, two flavours: ``onnx`` (the graph, for ``mlflow.onnx.load_model``, as before) and
  ``python_function`` (``SearchModel``), whose artifacts are the ONNX file, the manifest and, where
  ``cmpnas export --index`` names one, the embedded gallery (``cmpnas gallery embed``): its index,
  ids and record are copied into the model, so the registry version alone answers a search;
* the gallery's fingerprint and embedding size must be the export's (``check_compatible``, never
  forced): checked while the candidate is staged, before anything is written, and again on loading;
* a request is a DataFrame with one column ``image`` of base64 strings, each the bytes of an image
  file, decoded as ``cmpnas query`` decodes files (``request_images``), at most
  ``RequestLimits.max_images`` rows; ``k`` (1..``RequestLimits.max_k``, default ``DEFAULT_K``) is a
  param. The signature states both, so MLflow refuses a wrong column or a ``k`` that is no integer;
* the answer is a row per image: with a gallery ``ids`` (best first) and ``scores`` (cosine); without
  one ``embedding`` (embed only);
* every bad request is an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which the scoring
  server answers with HTTP 400 and the reason (naming the row of the image), and goes on serving.
  MLflow 3.17 maps no error code to 413, so an image over the size limit is a 400 here too;
* the model is a "model from code" (``search_model_code.py``), not a pickle: loading it imports
  ``SearchModel`` from the installed cmpnas (``--env-manager local`` in an environment with cmpnas)
  and unpickles nothing, and the model's requirements name cmpnas at the version that logged it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from orchestrator.common.version import cmpnas_version
from orchestrator.export.package import MANIFEST_FILE, ONNX_FILE
from orchestrator.export.registry import add_onnx_flavour
from orchestrator.serving.index import GALLERY_RECORD_FILE, INDEX_FILE, open_embedded_gallery
from orchestrator.serving.query import DEFAULT_K, QueryService, check_compatible
from orchestrator.serving.request_images import BadRequestError, RequestLimits, check_k, decode_base64_image
from workers.gallery.sources.precomputed import IDS_FILE

IMAGE_COLUMN = "image"
K_PARAM = "k"
# The names of the python_function flavour's artifacts.
ONNX_ARTIFACT, MANIFEST_ARTIFACT, GALLERY_ARTIFACT = "query_model", "manifest", "gallery"
# What of an embedded gallery folder a search needs (the embeddings are in the index).
GALLERY_FILES = (INDEX_FILE, IDS_FILE, GALLERY_RECORD_FILE)


class SearchModel(mlflow.pyfunc.PythonModel):
    """Base64 images in, the nearest gallery ids (or, without a gallery, the embeddings) out."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        gallery = artifacts.get(GALLERY_ARTIFACT)
        self.service = QueryService.from_files(Path(artifacts[ONNX_ARTIFACT]), Path(artifacts[MANIFEST_ARTIFACT]),
                                               Path(gallery) if gallery else None)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            return answer(self.service, model_input, params or {})
        except BadRequestError as error:
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None


def answer(service: QueryService, frame: pd.DataFrame, params: dict,
           limits: RequestLimits = RequestLimits()) -> pd.DataFrame:
    """The answer to one request (see the module's rules); ``BadRequestError`` for a bad one."""
    k = params.get(K_PARAM, DEFAULT_K)
    k = check_k(int(k) if isinstance(k, np.integer) else k, limits)
    if IMAGE_COLUMN not in getattr(frame, "columns", ()):
        raise BadRequestError(f"the input needs a column {IMAGE_COLUMN!r} of base64 images, got "
                              f"{list(getattr(frame, 'columns', []))}")
    texts = list(frame[IMAGE_COLUMN])
    if not 1 <= len(texts) <= limits.max_images:
        raise BadRequestError(f"a request holds 1 to {limits.max_images} images, got {len(texts)}: split it")
    images = np.stack([_decoded(row, text, service, limits) for row, text in enumerate(texts)])
    if service.gallery is None:
        return pd.DataFrame({"embedding": [row.astype(float).tolist() for row in service.embed(images)]})
    found = service.search(images, k)
    return pd.DataFrame({"ids": [[match.id for match in matches] for matches in found],
                         "scores": [[match.score for match in matches] for matches in found]})


def _decoded(row: int, text, service: QueryService, limits: RequestLimits) -> np.ndarray:
    try:
        return decode_base64_image(text, service.image_size, service.channels, limits)
    except BadRequestError as error:
        raise BadRequestError(f"image {row} ({IMAGE_COLUMN!r} of row {row}): {error}", error.status) from None


def search_signature(with_gallery: bool) -> ModelSignature:
    """A column of base64 images in; ids and scores (with a gallery, and ``k``) or embeddings out."""
    inputs = Schema([ColSpec(DataType.string, IMAGE_COLUMN)])
    if not with_gallery:
        return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(Array(DataType.double), "embedding")]))
    outputs = Schema([ColSpec(Array(DataType.string), "ids"), ColSpec(Array(DataType.double), "scores")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec(K_PARAM, DataType.long,
                                                                                        DEFAULT_K)]))


@dataclass(frozen=True)
class SearchFlavour:
    """The ``registry.ServedFlavour`` of ``cmpnas export``: the search model, with the embedded gallery
    ``index_dir`` where given (else embed only)."""

    index_dir: Path | None = None

    def check(self, folder: Path, manifest: dict) -> None:
        if self.index_dir is not None:
            check_compatible(manifest, self._gallery_record, folder, self.index_dir, force=False,
                             override=" and give its folder to --index")

    @cached_property
    def _gallery_record(self) -> dict:
        """The gallery's record, once its index, ids and record were read and found to agree."""
        return open_embedded_gallery(Path(self.index_dir)).record

    def save(self, path: Path, folder: Path, manifest: dict, mlflow_model: Model) -> None:
        with tempfile.TemporaryDirectory(prefix="cmpnas-gallery-") as scratch:
            artifacts = {ONNX_ARTIFACT: str(folder / ONNX_FILE), MANIFEST_ARTIFACT: str(folder / MANIFEST_FILE)}
            if self.index_dir is not None:
                gallery = Path(scratch) / "gallery"
                gallery.mkdir()
                for name in GALLERY_FILES:
                    shutil.copyfile(Path(self.index_dir) / name, gallery / name)
                artifacts[GALLERY_ARTIFACT] = str(gallery)
            mlflow.pyfunc.save_model(
                str(path), python_model=str(Path(__file__).with_name("search_model_code.py")), artifacts=artifacts, mlflow_model=mlflow_model,
                signature=search_signature(self.index_dir is not None),
                pip_requirements=[f"cmpnas=={cmpnas_version()}"])
        saved = mlflow_model.flavors["python_function"]["artifacts"][ONNX_ARTIFACT]["path"]
        add_onnx_flavour(mlflow_model, saved)
        mlflow_model.save(str(path / "MLmodel"))

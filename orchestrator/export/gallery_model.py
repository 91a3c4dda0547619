"""``cmpnas gallery export``: a gallery model cmpnas trained, as ONNX, for the gallery side without cmpnas.

What is written to the output folder, only after the checks pass:

- ``gallery.onnx``: opset 18, input ``images`` (float32, normalised with the checkpoint's mean and
  std, N x C x size x size, dynamic batch), output ``embeddings`` (N x D, L2-normalised). Its
  metadata property ``cmpnas.input`` holds the input spec as JSON (size, channels, mean, std), so
  ``gallery.source: onnx`` with ``gallery.path`` at the file needs no ``gallery.input``.
- ``gallery.json``: the checkpoint's fingerprint, input spec, embedding size, the ONNX file's
  SHA-256, and ``source_fingerprints``: the same model has one fingerprint per source it is loaded
  from (``cmpnas`` for the checkpoint, ``onnx`` for the file with its spec). Query models searched
  against the checkpoint record the ``cmpnas`` one.

Checks: ONNX Runtime's embeddings must match PyTorch's on fresh inputs (max |difference| <= 1e-4,
at another batch size than the export's), and the file must load as ``gallery.source: onnx`` with
the checkpoint's input spec and embedding size. Other sources are refused: their model already is
in the team's own format.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from orchestrator.common.version import cmpnas_version
from orchestrator.config import CmpnasConfig
from orchestrator.export.checks import PARITY_TOLERANCE
from orchestrator.setup.gallery import gallery_request
from search_space.errors import CmpnasError
from workers.gallery.sources import GallerySourceRequest, InputSpecRequest, load_gallery_model
from workers.gallery.sources.cmpnas_checkpoint import CmpnasGalleryModel
from workers.gallery.sources.onnx_model import METADATA_KEY
from workers.storage.file_digest import file_sha256

Log = Callable[[str], None]

GALLERY_ONNX_FILE = "gallery.onnx"
GALLERY_EXPORT_RECORD_FILE = "gallery.json"
GALLERY_EXPORT_FORMAT = "cmpnas-gallery-model"
GALLERY_EXPORT_VERSION = 1
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
PARITY_BATCH = 6


class GalleryExportError(CmpnasError, RuntimeError):
    """A gallery model that cannot or need not be exported, or an export that failed its checks."""


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class ExportedGallery:
    folder: Path
    onnx_path: Path
    record: dict[str, Any]


def export_configured_gallery(config: CmpnasConfig, output_dir: Path, log: Log = _quiet) -> ExportedGallery:
    """The configured cmpnas gallery checkpoint, exported to ``output_dir``."""
    source = config.gallery.source
    if source != "cmpnas":
        raise GalleryExportError(
            f"`cmpnas gallery export` exports a gallery model cmpnas trained (gallery.source 'cmpnas'); "
            f"gallery.source={source!r} is a model in the team's own format already: use {config.gallery_path} as "
            "it is"
        )
    if not config.gallery_path.is_file():
        raise GalleryExportError(f"there is no gallery checkpoint at {config.gallery_path} (gallery.path) to export: "
                                 "train it with `cmpnas gallery train` or run `cmpnas search` with this config first")
    gallery = load_gallery_model("cmpnas", gallery_request(config, config.data.channels, config.data.image_size))
    return export_gallery_model(gallery, output_dir, log)


def export_gallery_model(gallery: CmpnasGalleryModel, output_dir: Path, log: Log = _quiet) -> ExportedGallery:
    """``gallery.onnx`` and ``gallery.json`` of a loaded cmpnas gallery model (the module's rules)."""
    folder = Path(output_dir).resolve()
    _refuse_foreign_record(folder)
    folder.mkdir(parents=True, exist_ok=True)
    module = gallery.checkpoint.model.eval().cpu()
    spec = gallery.input_spec
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        staged = staging / GALLERY_ONNX_FILE
        _write_onnx(module, staged, spec.to_dict())
        difference = check_onnx_parity(module, staged, (spec.channels, spec.size, spec.size))
        onnx_fingerprint = _onnx_source_fingerprint(staged, gallery)
        log(f"ONNX Runtime matches PyTorch within {difference:.1e}; {GALLERY_ONNX_FILE} loads as gallery.source onnx "
            f"with fingerprint {onnx_fingerprint[:12]}")
        record = {
            "format": GALLERY_EXPORT_FORMAT, "format_version": GALLERY_EXPORT_VERSION,
            **gallery.identity(),
            "onnx": {"file": GALLERY_ONNX_FILE, "sha256": file_sha256(staged), "opset": ONNX_OPSET,
                     "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "input_metadata_key": METADATA_KEY,
                     "parity_max_abs_difference": difference},
            "source_fingerprints": {"cmpnas": gallery.fingerprint, "onnx": onnx_fingerprint},
            "note": (f"gallery.source onnx with gallery.path at {GALLERY_ONNX_FILE} embeds like the checkpoint (within "
                     f"{PARITY_TOLERANCE:g}) but is fingerprinted as source_fingerprints.onnx; query models searched "
                     "against the checkpoint record source_fingerprints.cmpnas"),
            "cmpnas_version": cmpnas_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / GALLERY_EXPORT_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        # The model first, the record last: a folder with a record is a finished export.
        (folder / GALLERY_EXPORT_RECORD_FILE).unlink(missing_ok=True)
        staged.replace(folder / GALLERY_ONNX_FILE)
        (staging / GALLERY_EXPORT_RECORD_FILE).replace(folder / GALLERY_EXPORT_RECORD_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"exported gallery model {gallery.description} ({gallery.fingerprint[:12]}) to {folder / GALLERY_ONNX_FILE}")
    return ExportedGallery(folder, folder / GALLERY_ONNX_FILE, record)


def _refuse_foreign_record(folder: Path) -> None:
    # An embedded gallery folder also has a gallery.json; overwriting it would break that folder.
    existing = folder / GALLERY_EXPORT_RECORD_FILE
    if existing.is_file():
        try:
            kind = json.loads(existing.read_text()).get("format")
        except (json.JSONDecodeError, AttributeError):
            kind = None
        if kind != GALLERY_EXPORT_FORMAT:
            raise GalleryExportError(f"{existing} is not the record of a gallery export (format {kind!r}); export to "
                                     "another --output")


def _write_onnx(module: nn.Module, path: Path, input_spec: dict[str, Any]) -> None:
    import onnx

    channels, size = input_spec["channels"], input_spec["size"]
    example = torch.randn(2, channels, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}}, dynamo=True,
                          opset_version=ONNX_OPSET, external_data=False, verbose=False)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(input_spec, sort_keys=True)
    model.doc_string = "cmpnas gallery model: normalised images (N, C, H, W) -> L2-normalised embeddings (N, D)"
    onnx.save(model, str(path))


def check_onnx_parity(module: nn.Module, path: Path, input_shape: tuple[int, int, int], seed: int = 0) -> float:
    """Max |difference| of ONNX Runtime's embeddings from PyTorch's on fresh normalised inputs; refused above
    ``PARITY_TOLERANCE``."""
    import onnxruntime

    inputs = torch.randn(PARITY_BATCH, *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        reference = module(inputs).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {INPUT_NAME: inputs.numpy()})[0]
    difference = float(np.abs(exported - reference).max())
    if not difference <= PARITY_TOLERANCE:
        raise GalleryExportError(f"ONNX Runtime's gallery embeddings differ from PyTorch's by {difference:.2e} "
                                 f"(> {PARITY_TOLERANCE:g}); the export is not faithful and was not written")
    return difference


def _onnx_source_fingerprint(path: Path, gallery: CmpnasGalleryModel) -> str:
    """The file's fingerprint as ``gallery.source: onnx``, after checking it loads with the checkpoint's spec."""
    spec = gallery.input_spec
    request = GallerySourceRequest(path=path, input=InputSpecRequest(), data_channels=spec.channels,
                                   data_image_size=spec.size)
    loaded = load_gallery_model("onnx", request)
    if loaded.input_spec != spec or loaded.embed_dim != gallery.embed_dim:
        raise GalleryExportError(f"{GALLERY_ONNX_FILE} loads as gallery.source onnx with input {loaded.input_spec} "
                                 f"and D={loaded.embed_dim}, not the checkpoint's {spec} and D={gallery.embed_dim}")
    return loaded.fingerprint


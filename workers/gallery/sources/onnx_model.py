"""``gallery.source: onnx``: an ONNX model run with ONNX Runtime (CUDA when a GPU is there, else CPU).

The model's first input takes normalised float32 images (N, C, H, W) and its first output is the
(N, D) embedding; cmpnas L2-normalises it. Input defaults, in order: ``gallery.input``; the
model's metadata property ``cmpnas.input`` (JSON with size, channels, mean, std, as
``cmpnas gallery export`` writes it; a value of the wrong type is refused, naming the key and
the format); the static dimensions of the input (channels, size). A static input size other than
the configured one is refused: the model cannot take it.

Batches: a model whose batch dimension is fixed (an int in the input's shape) is fed batches of
exactly that size, the last one padded with blank images whose embeddings are dropped; any other
model is checked at load on a batch of two, so a model that only runs on one image is refused
then, not on the first batch of a search. A run that fails later is a ``GallerySourceError``
naming the model file.

The paragon's cost is counted by ``workers.gallery.sources.onnx_flops`` on the shapes one run of
the graph produces, in fvcore's convention (one multiply-add = one flop); a cost it cannot count
is refused with the fix ``gallery.mflops``, never recorded as zero.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluators.complexity import ComplexityReport
from evaluators.latency import LatencyReport, LatencySettings, measure_onnx_latency
from workers.gallery.sources.base import (
    GalleryInputSpec,
    GalleryModel,
    GallerySourceError,
    GallerySourceRequest,
    InputSpecRequest,
    check_finite,
    files_fingerprint,
    normalized_rows,
)
from workers.gallery.sources.onnx_flops import count_onnx_flops
from workers.gallery.sources.registry import register_gallery_source

METADATA_KEY = "cmpnas.input"
METADATA_FORMAT = ('JSON object {"size": int, "channels": int, "mean": [float, ...], "std": [float, ...]}, each key '
                   'optional, e.g. {"size": 224, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, '
                   '0.225]}')
# A model with a dynamic batch dimension is checked on this many images, so one fixed at 1 shows at load.
PROBE_BATCH = 2
RUN_FIX = ("export it with a dynamic batch dimension (torch.onnx.export's dynamic_axes or dynamic_shapes) and check "
           "that it takes gallery.input (size, channels) and fits the device's memory")


class OnnxGalleryModel(GalleryModel):
    source = "onnx"

    def __init__(self, path: Path, session, fingerprint: str, spec: GalleryInputSpec, embed_dim: int,
                 fixed_batch: int | None = None):
        super().__init__(fingerprint, spec, embed_dim, f"onnx:{path.name}")
        self.path = path
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.fixed_batch = fixed_batch

    def embed(self, images: np.ndarray, ids: Sequence[str], device: torch.device, batch_size: int = 256
              ) -> np.ndarray:
        step = self.fixed_batch or batch_size
        chunks = [self.run_batch(self.input_spec.model_input(images[start : start + step]).numpy())
                  for start in range(0, len(images), step)]
        self.images_embedded += len(images)
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, self.embed_dim), np.float32)
        check_finite(embeddings, f"ONNX gallery model {self.path}", "check the model and gallery.input (mean, std)")
        return normalized_rows(embeddings)

    def run_batch(self, inputs: np.ndarray) -> np.ndarray:
        """(N, D) raw embeddings of ``inputs``; a fixed-batch model gets a full batch, padded with blanks."""
        count = len(inputs)
        if self.fixed_batch and count < self.fixed_batch:
            blanks = np.zeros((self.fixed_batch - count, *inputs.shape[1:]), dtype=inputs.dtype)
            inputs = np.concatenate([inputs, blanks])
        try:
            output = self.session.run(None, {self.input_name: inputs})[0]
        except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise GallerySourceError(f"ONNX gallery model {self.path} fails on a batch of {len(inputs)} images of "
                                     f"{'x'.join(map(str, inputs.shape[1:]))} ({str(error)[:300]}); {RUN_FIX}"
                                     ) from error
        return np.asarray(output, dtype=np.float32).reshape(len(inputs), -1)[:count]

    def measure_latency(self, settings: LatencySettings) -> LatencyReport | None:
        """The model file itself timed in ONNX Runtime (``evaluators.latency``): it is the deployed graph;
        None where it does not run at the settings' batch (a model with another fixed batch size)."""
        spec = self.input_spec
        try:
            return measure_onnx_latency(self.path, (spec.channels, spec.size, spec.size), settings)
        except Exception:  # noqa: BLE001 - ONNX Runtime raises its own types; latency is then not measured
            return None

    def measure_cost(self) -> ComplexityReport:
        spec = self.input_spec
        return count_onnx_flops(self.path, (1, spec.channels, spec.size, spec.size),
                                description=f"ONNX gallery model {self.path}")


@register_gallery_source("onnx")
def load_onnx_gallery(request: GallerySourceRequest) -> OnnxGalleryModel:
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(request.path), providers=_providers(onnxruntime))
    except Exception as error:  # noqa: BLE001 - ORT raises its own exception types
        raise GallerySourceError(f"gallery.path={str(request.path)!r} is not an ONNX model ONNX Runtime can load "
                                 f"({str(error)[:300]}); export one with torch.onnx.export") from error
    model_input = session.get_inputs()[0]
    shape = list(model_input.shape)
    if len(shape) != 4:
        raise GallerySourceError(f"ONNX gallery model {request.path} takes input {model_input.name!r} of shape {shape}; "
                                 "gallery.source 'onnx' needs images (N, C, H, W)")
    static_channels = shape[1] if isinstance(shape[1], int) else None
    static_size = shape[2] if isinstance(shape[2], int) else None
    recorded = _recorded_input(session, request.path, request.input)
    spec = request.input.resolve(
        size=recorded.get("size") or static_size or request.data_image_size,
        channels=recorded.get("channels") or static_channels or request.data_channels,
        mean=recorded.get("mean"), std=recorded.get("std"), source="onnx")
    for name, static, wanted in (("channels", static_channels, spec.channels), ("size", static_size, spec.size),
                                 ("size", shape[3] if isinstance(shape[3], int) else None, spec.size)):
        if static is not None and static != wanted:
            raise GallerySourceError(
                f"ONNX gallery model {request.path} takes input of shape {shape}, which cannot take "
                f"gallery.input.{name}={wanted}: set gallery.input.{name} to {static}, or export the model with a "
                "dynamic input size"
            )
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    embed_dim = _probe_embed_dim(session, request.path, spec, fixed_batch or PROBE_BATCH)
    fingerprint = files_fingerprint([request.path], {"source": "onnx", "input": spec.to_dict()})
    return OnnxGalleryModel(request.path, session, fingerprint, spec, embed_dim, fixed_batch)


def _probe_embed_dim(session, path: Path, spec: GalleryInputSpec, batch: int) -> int:
    """The embedding size, from a run on ``batch`` blank images (the model's fixed batch, else ``PROBE_BATCH``)."""
    probe = np.zeros((batch, spec.channels, spec.size, spec.size), dtype=np.float32)
    try:
        output = np.asarray(session.run(None, {session.get_inputs()[0].name: probe})[0])
    except Exception as error:  # noqa: BLE001
        raise GallerySourceError(
            f"ONNX gallery model {path} fails on a batch of {batch} images of {spec.channels}x{spec.size}x"
            f"{spec.size} ({str(error)[:300]}); set gallery.input.size and channels to what it takes, and export it "
            "with a dynamic batch dimension (torch.onnx.export's dynamic_axes or dynamic_shapes) if it runs only "
            "on a batch of another size") from error
    if output.ndim < 2 or output.shape[0] != batch:
        raise GallerySourceError(
            f"ONNX gallery model {path} maps a batch of {batch} images to an output of shape "
            f"{list(output.shape)}; its first output must be one embedding per image (N x D): export it with a "
            "dynamic batch dimension that reaches the output")
    return int(output.reshape(batch, -1).shape[1])


def _providers(onnxruntime) -> list[str]:
    available = onnxruntime.get_available_providers()
    if torch.cuda.is_available() and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _recorded_input(session, path: Path, configured: InputSpecRequest) -> dict[str, Any]:
    """The input spec in the model's ``cmpnas.input`` metadata, for the fields ``gallery.input`` leaves
    unset; a value of the wrong type is refused, naming the key and the format."""
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    needed = [name for name in ("size", "channels", "mean", "std") if getattr(configured, name) is None]
    if not raw or not needed:
        return {}
    try:
        recorded = json.loads(raw)
    except json.JSONDecodeError:
        recorded = None
    wrong = "it is not a JSON object" if not isinstance(recorded, dict) else next(
        (f"{name!r} is {recorded[name]!r}" for name in needed if not _valid_input_value(name, recorded.get(name))),
        None)
    if wrong:
        fields = ", ".join(f"gallery.input.{name}" for name in needed)
        raise GallerySourceError(
            f"ONNX gallery model {path} has metadata property {METADATA_KEY!r} = {raw[:200]!r}, which cmpnas cannot "
            f"read: {wrong}; the expected format is a {METADATA_FORMAT}. Correct or remove the property "
            f"(onnx.load, edit model.metadata_props, onnx.save), or set {fields}, which take precedence")
    return {name: recorded.get(name) for name in needed}


def _valid_input_value(name: str, value: Any) -> bool:
    """None (not recorded), a positive int for size and channels, a non-empty list of numbers for mean and std."""
    if value is None:
        return True
    if name in ("size", "channels"):
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))

"""The frozen gallery model behind one interface, whatever form the team ships it in.

A *gallery source* (``gallery.source``) loads a ``GalleryModel`` from ``gallery.path``: a cmpnas
checkpoint, timm weights, a TorchScript module, an ONNX model or precomputed embeddings. The rest
of cmpnas sees only this interface. The rules every source keeps:

- **Embeddings** are float32 (N x D) and L2-normalised: retrieval compares them by inner product
  (cosine). ``embed_dim`` is D, taken from the model, and the query models' heads follow it.
- **Inputs** are what ``input_spec`` says (size, channels, mean, std), independent of the query
  model's: a 1-channel data set feeds a 3-channel model by repeating the channel, and a 3-channel
  one feeds a 1-channel model by averaging (``adapt_channels``); images are resized to ``size``.
- **Identity**: ``fingerprint`` is a SHA-256 over the model's file(s) and its input spec (a cmpnas
  checkpoint keeps its own fingerprint, which covers its weights, architecture and input spec).
  Two searches with equal fingerprints used the same gallery.
- **Bad input** raises ``GallerySourceError`` naming the ``gallery.*`` field and the fix, before
  anything is recorded.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluators.complexity import ComplexityReport
from evaluators.latency import LatencyReport, LatencySettings, measure_model_latency
from workers.storage.checkpoint import CheckpointError
from workers.storage.file_digest import update_with_file
from workers.training.preprocess import to_model_input

# ImageNet statistics: what timm's pretrained models (and most production backbones) expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GallerySourceError(CheckpointError):
    """A gallery model or embedding file that cannot be used as configured; names the field and the fix."""


@dataclass(frozen=True)
class GalleryInputSpec:
    """What the gallery model takes: ``channels`` x ``size`` x ``size`` images, normalised by mean/std."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise GallerySourceError(f"gallery.input.channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise GallerySourceError(
                f"gallery.input.mean {list(self.mean)} and gallery.input.std {list(self.std)} need one value per "
                f"channel of the gallery model ({self.channels}); give {self.channels} values each"
            )
        if any(not value > 0 for value in self.std):
            raise GallerySourceError(f"gallery.input.std {list(self.std)} must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    def model_input(self, images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 (N, C, H, W) of any channel count (1 or 3) -> the model's normalised float input."""
        return to_model_input(adapt_channels(images, self.channels), self.mean, self.std, self.size, device)


def adapt_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 images with ``channels`` channels: a gray channel repeated, or RGB averaged to gray."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if have == 3 and channels == 1:
        return np.round(images.mean(axis=1, keepdims=True)).astype(np.uint8)
    raise GallerySourceError(f"cannot feed {have}-channel images to a {channels}-channel gallery model "
                             "(gallery.input.channels): only 1 and 3 channels are supported")


@dataclass(frozen=True)
class InputSpecRequest:
    """``gallery.input`` as configured: any field left None takes the source's default."""

    size: int | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def resolve(self, *, size: int | None, channels: int | None, mean: Sequence[float] | None,
                std: Sequence[float] | None, source: str) -> GalleryInputSpec:
        """The configured values, else the given defaults; a value neither gives is an error naming its field."""
        chosen = {"size": self.size or size, "channels": self.channels or channels,
                  "mean": self.mean or (tuple(mean) if mean else None), "std": self.std or (tuple(std) if std else None)}
        missing = [name for name, value in chosen.items() if value is None]
        if missing:
            fields = ", ".join(f"gallery.input.{name}" for name in missing)
            raise GallerySourceError(
                f"gallery.source={source!r} cannot tell the gallery model's {', '.join(missing)}: set {fields} to what "
                f"the model was trained with (for ImageNet models: mean {list(IMAGENET_MEAN)}, std "
                f"{list(IMAGENET_STD)})"
            )
        return GalleryInputSpec(int(chosen["size"]), int(chosen["channels"]), tuple(float(v) for v in chosen["mean"]),
                                tuple(float(v) for v in chosen["std"]))


@dataclass(frozen=True)
class GallerySourceRequest:
    """What a gallery source is asked to load: ``gallery.*`` plus the data's shape for defaults."""

    path: Path
    input: InputSpecRequest
    data_channels: int
    data_image_size: int
    backbone: str | None = None
    head: str | None = None
    # ``gallery.allow_torchscript``: a TorchScript file runs its own code when loaded.
    allow_torchscript: bool = False
    # The fingerprint the job recorded (a resume, an export, a trial): a source whose loading runs
    # code compares it with the file's before loading (``refuse_other_fingerprint``).
    expected_fingerprint: str | None = None


@dataclass(frozen=True)
class FrozenClassifier:
    """A linear classifier over L2-normalised gallery embeddings: ``logits = W (s * e) + b``.

    The BCT influence loss applies it, frozen, to query embeddings."""

    weight: np.ndarray
    bias: np.ndarray
    logit_scale: float
    kind: str

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])


class GalleryModel(ABC):
    """A loaded, frozen gallery model. The search calls, in this order:

    1. the properties (``fingerprint``, ``input_spec``, ``embed_dim``, ``description``), when it
       records the gallery and sizes the search space;
    2. ``embed`` once per split (train, query, gallery) for the whole search (in the driver, or in
       Ray Data actors that open their own copy); and, only when training is augmented, in each
       trial on every augmented batch (``workers.compatibility.targets``);
    3. ``own_classifier`` once, when the BCT classifier is chosen (``gallery.classifier``);
    4. ``measure_cost`` once, for the paragon's cost, and ``measure_latency`` once where latency is
       measured (``resources.measure_latency``);
    5. ``release`` after the embeddings, so the model holds no accelerator memory while trials run.
    """

    #: The registered ``gallery.source`` name.
    source: str

    def __init__(self, fingerprint: str, input_spec: GalleryInputSpec, embed_dim: int, description: str):
        self.fingerprint = fingerprint
        self.input_spec = input_spec
        self.embed_dim = embed_dim
        self.description = description
        # Images this model embedded (not looked up): the once-per-search promise is checked with it.
        self.images_embedded = 0

    @abstractmethod
    def embed(self, images: np.ndarray, ids: Sequence[str], device: torch.device, batch_size: int = 256
              ) -> np.ndarray:
        """L2-normalised float32 embeddings (N x ``embed_dim``) of uint8 ``images`` (N, C, H, W), whose
        ids are ``ids``; a source of precomputed embeddings looks the ids up instead."""

    def measure_cost(self) -> ComplexityReport | None:
        """FLOPs of one image at ``input_spec`` (fvcore convention), or None where they cannot be measured."""
        return None

    def measure_latency(self, settings: LatencySettings) -> LatencyReport | None:
        """Latency of the model's deployed graph (``evaluators.latency``: its ONNX export in ONNX Runtime),
        or None where there is no graph to time here (precomputed embeddings, a module that does not export)."""
        module = self.torch_module()
        if module is None:
            return None
        spec = self.input_spec
        try:
            return measure_model_latency(module, (spec.channels, spec.size, spec.size), settings)
        except Exception:  # noqa: BLE001 - the exporters raise many types; latency is then not measured
            return None

    def own_classifier(self, num_classes: int) -> FrozenClassifier | None:
        """The model's own classifier, if it has one for ``num_classes`` classes over its embedding."""
        return None

    def torch_module(self) -> torch.nn.Module | None:
        """A module from normalised input (N, C, size, size) to embeddings, where the model is one."""
        return None

    def release(self) -> None:
        """Free accelerator memory; called once the embeddings are computed."""

    def identity(self) -> dict[str, Any]:
        """What the parent run, the resume state and an export's manifest record of this gallery."""
        return {"source": self.source, "model": self.description, "fingerprint": self.fingerprint,
                "embed_dim": self.embed_dim, "input": self.input_spec.to_dict()}


def files_fingerprint(paths: Sequence[Path], described: dict[str, Any]) -> str:
    """SHA-256 over the bytes of ``paths`` (in order, each with its name) and the JSON of ``described``."""
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for path in paths:
        digest.update(f"\0{path.name}\0".encode())
        update_with_file(digest, path)
    return digest.hexdigest()


def bytes_fingerprint(name: str, content: bytes, described: dict[str, Any]) -> str:
    """``files_fingerprint`` of one file named ``name`` whose bytes are ``content`` (already read, so
    that the bytes checked are the bytes loaded)."""
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    digest.update(f"\0{name}\0".encode())
    digest.update(content)
    return digest.hexdigest()


def refuse_other_fingerprint(request: GallerySourceRequest, fingerprint: str) -> None:
    """``GallerySourceError`` when ``request`` expects another fingerprint than the file's ``fingerprint``:
    called before loading by a source whose loading runs code, so a swapped file is never run."""
    expected = request.expected_fingerprint
    if expected is not None and fingerprint != expected:
        raise GallerySourceError(
            f"gallery model {request.path} has fingerprint {fingerprint[:12]}, the job recorded {expected[:12]}: the "
            "file changed since it was recorded and was not loaded. Restore the recorded gallery model at that path "
            "(gallery.path, gallery.input)"
        )


def normalized_rows(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def check_finite(embeddings: np.ndarray, where: str, fix: str) -> np.ndarray:
    """``embeddings`` unchanged, or ``GallerySourceError`` if any value is NaN or infinite."""
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        raise GallerySourceError(f"{where}: {int(bad.sum())} embeddings hold NaN or infinite values "
                                 f"(first at row {int(np.flatnonzero(bad)[0])}); {fix}")
    return embeddings


def require_file(path: Path, field: str, kind: str) -> Path:
    if not path.is_file():
        raise GallerySourceError(f"{field}={str(path)!r} is not a file; give the path of {kind}")
    return path

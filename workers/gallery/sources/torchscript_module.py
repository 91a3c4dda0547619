"""``gallery.source: torchscript``: a traced or scripted module (``torch.jit.save``) from images to embeddings.

The module takes normalised float32 input (N, C, size, size) as ``gallery.input`` describes it and
returns (N, D) embeddings; cmpnas L2-normalises them. A TorchScript file carries no
preprocessing, so ``gallery.input.mean`` and ``gallery.input.std`` must be set; size and channels
default to the data's.

Trust: loading a TorchScript file is running code. ``torch.jit.load`` runs the module's scripted
``__setstate__``, and TorchScript can call operators that read and write files; it runs in the
driver (which holds the tracking credentials and the Ray token) and in every worker. So the
source is refused unless ``gallery.allow_torchscript`` is true (``allow_torchscript`` of the
request), and where a fingerprint was recorded for the file (a resume, an export, a trial opening
the job's model) the file's is computed from its bytes and compared **before** ``torch.jit.load``.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import torch

from evaluators.complexity import ComplexityReport
from workers.gallery.sources.base import (
    GallerySourceError,
    GallerySourceRequest,
    bytes_fingerprint,
    refuse_other_fingerprint,
)
from workers.gallery.sources.onnx_flops import count_onnx_flops
from workers.gallery.sources.registry import register_gallery_source
from workers.gallery.sources.torch_model import NormalizedEmbedding, TorchGalleryModel


class TorchScriptGalleryModel(TorchGalleryModel):
    source = "torchscript"

    def measure_cost(self) -> ComplexityReport | None:
        """Counted on the module exported to ONNX and run once (fvcore cannot trace a ScriptModule): the
        same convention, with batch norm folded into the convolutions by the exporter, so a few per cent
        below fvcore's count of the original module. None when the module does not export (the search
        then asks for gallery.mflops); a ``GallerySourceError`` naming gallery.mflops when the export
        cannot be counted."""
        spec = self.input_spec
        shape = (1, spec.channels, spec.size, spec.size)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "gallery.onnx"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(self.module.network.cpu(), (torch.zeros(shape),), str(path), dynamo=False)
            except Exception:  # noqa: BLE001 - exporter failures come in many types; the cost is then unknown
                return None
            return count_onnx_flops(path, shape, description=f"TorchScript gallery model {self.description} "
                                                                 "(exported to ONNX to count its cost)")


TORCHSCRIPT_OPT_IN = (
    "gallery.source 'torchscript' runs code from the model file when it loads (torch.jit.load runs scripted "
    "__setstate__ and may call file operators), in the driver that holds the tracking credentials and the Ray token "
    "and in every worker. Set gallery.allow_torchscript: true (--set gallery.allow_torchscript=true; for cmpnas "
    "export: --allow-torchscript) only for a file you trust as you trust cmpnas's own code, or export the model to "
    "ONNX and use gallery.source onnx"
)


@register_gallery_source("torchscript")
def load_torchscript_gallery(request: GallerySourceRequest) -> TorchScriptGalleryModel:
    if not request.allow_torchscript:
        raise GallerySourceError(f"gallery.allow_torchscript is false: {TORCHSCRIPT_OPT_IN}")
    spec = request.input.resolve(size=request.data_image_size, channels=request.data_channels, mean=None, std=None,
                                 source="torchscript")
    # Read once, fingerprinted, then loaded from those bytes: a file other than the recorded one is refused
    # unrun, and one swapped after the check is never the one loaded.
    try:
        content = request.path.read_bytes()
    except OSError as error:  # a folder, a missing or unreadable file
        raise GallerySourceError(f"gallery.path={str(request.path)!r} cannot be read ({error.strerror or error}); "
                                 "give the TorchScript file itself, readable by this user") from error
    fingerprint = bytes_fingerprint(request.path.name, content, {"source": "torchscript", "input": spec.to_dict()})
    refuse_other_fingerprint(request, fingerprint)
    try:
        module = torch.jit.load(io.BytesIO(content), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - RuntimeError or a zip error on a wrong file
        raise GallerySourceError(
            f"gallery.path={str(request.path)!r} is not a TorchScript file ({type(error).__name__}: "
            f"{str(error)[:300]}); save one with torch.jit.save(torch.jit.trace(model, example), path), or pick "
            "the gallery.source for this file (timm for a state_dict, onnx for an ONNX model)"
        ) from error
    return TorchScriptGalleryModel(NormalizedEmbedding(module), fingerprint, spec, f"torchscript:{request.path.name}")

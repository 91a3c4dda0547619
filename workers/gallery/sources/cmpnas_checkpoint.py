"""``gallery.source: cmpnas``: a gallery model trained by ``cmpnas gallery train`` (safetensors with metadata).

The checkpoint records its architecture, input spec and training data, and carries its own
fingerprint over all of them; it has a classifier for the classes it was trained on.
"""

from __future__ import annotations

from typing import Any

from workers.gallery.model import GalleryCheckpoint, load_gallery
from workers.gallery.sources.base import FrozenClassifier, GalleryInputSpec, GallerySourceError, GallerySourceRequest
from workers.gallery.sources.registry import register_gallery_source
from workers.gallery.sources.torch_model import TorchGalleryModel


class CmpnasGalleryModel(TorchGalleryModel):
    source = "cmpnas"

    def __init__(self, checkpoint: GalleryCheckpoint):
        arch = checkpoint.model.arch
        spec = GalleryInputSpec(arch.image_size, arch.in_chans, tuple(checkpoint.mean), tuple(checkpoint.std))
        super().__init__(checkpoint.model, checkpoint.fingerprint, spec, arch.backbone, embed_dim=arch.embed_dim)
        self.checkpoint = checkpoint

    @property
    def info(self) -> dict[str, Any]:
        """What the checkpoint records of its training data (dataset, class names, split)."""
        return self.checkpoint.info

    def own_classifier(self, num_classes: int) -> FrozenClassifier | None:
        model = self.checkpoint.model
        if model.arch.num_classes != num_classes:
            return None
        return FrozenClassifier(model.classifier.weight.detach().cpu().numpy().copy(),
                                model.classifier.bias.detach().cpu().numpy().copy(),
                                model.arch.logit_scale, "from_model")


@register_gallery_source("cmpnas")
def load_cmpnas_gallery(request: GallerySourceRequest) -> CmpnasGalleryModel:
    checkpoint = load_gallery(request.path)
    model = CmpnasGalleryModel(checkpoint)
    configured = request.input
    recorded = model.input_spec
    differing = [f"gallery.input.{name} is {getattr(configured, name)!r}, the checkpoint's is {value!r}"
                 for name, value in (("size", recorded.size), ("channels", recorded.channels),
                                     ("mean", recorded.mean), ("std", recorded.std))
                 if getattr(configured, name) is not None and tuple(_as_tuple(getattr(configured, name))) != _as_tuple(value)]
    if differing:
        raise GallerySourceError(f"gallery checkpoint {request.path} records its own input spec: " + "; ".join(differing)
                                 + ". Remove gallery.input for gallery.source 'cmpnas'")
    return model


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)

"""The frozen gallery model from any source: cmpnas checkpoints, timm weights, TorchScript, ONNX, embeddings."""

from workers.gallery.sources.base import (
    FrozenClassifier,
    GalleryInputSpec,
    GalleryModel,
    GallerySourceError,
    GallerySourceRequest,
    InputSpecRequest,
    adapt_channels,
)
from workers.gallery.sources.registry import (
    GALLERY_SOURCES,
    GalleryLoader,
    load_gallery_model,
    register_gallery_source,
)

__all__ = [
    "GALLERY_SOURCES",
    "FrozenClassifier",
    "GalleryInputSpec",
    "GalleryLoader",
    "GalleryModel",
    "GallerySourceError",
    "GallerySourceRequest",
    "InputSpecRequest",
    "adapt_channels",
    "load_gallery_model",
    "register_gallery_source",
]

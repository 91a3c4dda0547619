"""Named gallery sources behind one factory, ``load_gallery_model`` (``gallery.source``).

A source turns a ``GallerySourceRequest`` into a ``GalleryModel``. The built-ins register
themselves in their own modules; the rules of names and errors are those of
``search_space.registry``, except that an unknown name raises ``GallerySourceError``.
"""

from __future__ import annotations

from typing import Callable

from search_space.registry import Registry, UnknownNameError
from workers.gallery_sources.base import GalleryModel, GallerySourceError, GallerySourceRequest

GallerySource = Callable[[GallerySourceRequest], GalleryModel]
GALLERY_SOURCES: Registry[GallerySource] = Registry(
    "gallery source", "gallery.source",
    builtin_modules=("workers.gallery_sources.cmpnas_checkpoint", "workers.gallery_sources.timm_weights",
                     "workers.gallery_sources.torchscript_module", "workers.gallery_sources.onnx_model",
                     "workers.gallery_sources.precomputed"),
)


def register_gallery_source(name: str) -> Callable[[GallerySource], GallerySource]:
    return GALLERY_SOURCES.register(name)


def load_gallery_model(source: str, request: GallerySourceRequest) -> GalleryModel:
    try:
        load = GALLERY_SOURCES[source]
    except UnknownNameError as error:
        raise GallerySourceError(str(error)) from None
    if not request.path.exists():
        raise GallerySourceError(f"gallery.path={str(request.path)!r} does not exist; point it at the gallery model "
                                 f"for gallery.source={source!r}")
    return load(request)

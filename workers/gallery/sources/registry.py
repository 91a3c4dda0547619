"""Named gallery sources behind one factory, ``load_gallery_model`` (``gallery.source``).

A source turns a ``GallerySourceRequest`` into a ``GalleryModel``. The built-ins are declared here
by name and register themselves in their own modules; the rules of names and errors are those of
``search_space.registry``, except that an unknown name raises ``GallerySourceError``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from search_space.registry import Registry, UnknownNameError
from workers.gallery.sources.base import GalleryModel, GallerySourceError, GallerySourceRequest

GallerySource = Callable[[GallerySourceRequest], GalleryModel]
GALLERY_SOURCES: Registry[GallerySource] = Registry(
    "gallery source", "gallery.source",
    builtins={"cmpnas": "workers.gallery.sources.cmpnas_checkpoint", "timm": "workers.gallery.sources.timm_weights",
              "torchscript": "workers.gallery.sources.torchscript_module", "onnx": "workers.gallery.sources.onnx_model",
              "embeddings": "workers.gallery.sources.precomputed"},
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


@dataclass(frozen=True)
class GalleryLoader:
    """How to open a gallery model: what a process that did not load it (a Ray actor, a trial)
    needs to open its own copy from the same file."""

    source: str
    request: GallerySourceRequest

    def open(self) -> GalleryModel:
        return load_gallery_model(self.source, self.request)

    def expecting(self, fingerprint: str) -> GalleryLoader:
        """This loader, for the model with ``fingerprint`` only: a source whose loading runs code
        checks the file before loading it (what a Ray actor is given)."""
        return GalleryLoader(self.source, replace(self.request, expected_fingerprint=fingerprint))

    def open_matching(self, fingerprint: str) -> GalleryModel:
        """The model, which must be the one with ``fingerprint`` (what the job loaded): another file at
        that path on this node is refused, before loading where loading runs code."""
        model = self.expecting(fingerprint).open()
        if model.fingerprint != fingerprint:
            raise GallerySourceError(
                f"gallery model {self.request.path} has fingerprint {model.fingerprint[:12]} here, the job loaded "
                f"{fingerprint[:12]}: put the same gallery model at that path on every node"
            )
        return model

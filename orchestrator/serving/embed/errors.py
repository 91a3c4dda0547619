"""The error of ``cmpnas gallery embed``, shared by its modules."""

from __future__ import annotations

from search_space.errors import CmpnasError


class GalleryEmbedError(CmpnasError, RuntimeError):
    """A collection, output folder or gallery model that cannot be embedded as asked; says the fix."""

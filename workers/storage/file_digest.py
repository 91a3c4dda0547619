"""SHA-256 of files, read in blocks: data-set downloads, gallery model files, export packages."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def update_with_file(digest: "hashlib._Hash", path: Path) -> None:
    """Feed ``path``'s bytes to ``digest`` without reading the whole file into memory."""
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()

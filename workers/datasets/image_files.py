"""Which files of a collection are images, and how one image file becomes a uint8 array.

Rules:
* an image is a file with one of ``IMAGE_SUFFIXES`` (any case); hidden files and folders (a name
  starting with ``.``, which includes macOS's ``._*`` resource forks) are never images;
* an image is decoded whole, converted to gray (``L``) or RGB, and resized (not cropped) to
  ``size`` x ``size`` with bilinear filtering, as uint8 (C, H, W). A JPEG at least twice the size
  on both sides is decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``: the largest reduction that
  still covers ``size``), which saves most of the decoding of a large photo;
* integer gray images of more than 8 bits (Pillow modes ``I;16...`` and ``I``: 16-bit PNG, TIFF
  and PGM) are read as 16-bit values and scaled to 8 bits (``value * 255 / 65535``, rounded;
  values outside 0-65535 clipped), never clipped at 255 as Pillow's own conversion does;
* an image larger than ``MAX_IMAGE_PIXELS`` is refused before it is decoded (a decompression
  bomb: a small file that expands to gigabytes); Pillow's own limit is set to the same value;
* every way a file can fail to decode (not an image, truncated, too large, a mode that cannot be
  converted, a damaged header) raises ``ImageDecodeError`` with the reason, so a collection can
  count and skip bad files. An error of the system while reading (an ``OSError`` with an errno:
  too many open files, I/O error, a stale network file handle, a file removed since it was
  listed) is not the file's fault and must not make it a bad file for good: it raises
  ``ImageReadError`` naming the file, and a ``MemoryError`` propagates with a note naming it;
* an image is *stored in colour* when its mode carries colour (RGB, RGBA, CMYK, YCbCr, ...; a
  palette with any entry that is not gray), read from the file's header without decoding it
  (``stored_in_colour``). An RGB file of gray pixels counts as colour: what it holds is not looked at.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from workers.datasets.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
# 89.5 megapixels is Pillow's default warning threshold; larger photos are not what a search trains on.
MAX_IMAGE_PIXELS = 89_478_485


class ImageDecodeError(ValueError):
    """One file that is not a usable image; the message is the reason."""


class ImageReadError(DataError):
    """A file that could not be read for a reason of the system, not of its content (module rules)."""

    @classmethod
    def of(cls, path: str | Path, error: OSError) -> ImageReadError:
        # One message argument, as every exception that Ray pickles from a trial to the driver must take.
        return cls(f"cannot read {path} ({type(error).__name__}: {error}): an error of the system, not of the image, "
                   "so it is not counted as a bad file; fix the cause (the open-file limit, ulimit -n; the disk; a "
                   "network file system's mount) and run again")


# What a damaged or unsupported file makes Pillow raise (besides OSError without an errno): its
# plugins parse headers with struct and index tables, so a malformed file can raise any of these.
FORMAT_ERRORS = (SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, ZeroDivisionError)


def is_hidden(path: Path, root: Path) -> bool:
    """Whether ``path`` or a folder between ``root`` and it is hidden (its name starts with ``.``)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def is_image_file(path: Path, root: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(path, root) and path.is_file()


def image_files_under(folder: Path, root: Path) -> list[Path]:
    """The image files below ``folder`` in sorted order, hidden files and folders skipped."""
    return sorted(path for path in folder.rglob("*") if is_image_file(path, root))


def decode_image_file(path: str | Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 (C, ``size``, ``size``); ``ImageDecodeError`` with the reason if it cannot be,
    ``ImageReadError`` when the system failed to read it (module rules)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageDecodeError(f"{width}x{height} pixels is above the limit of {MAX_IMAGE_PIXELS} "
                                       "(a decompression bomb or an oversized scan)")
            image.draft(None, (size, size))  # JPEG only: decode at a reduced scale that still covers size
            decoded = eight_bit(image).convert("L" if channels == 1 else "RGB")
            decoded = decoded.resize((size, size), Image.Resampling.BILINEAR)
    except ImageDecodeError:
        raise
    except OSError as error:  # UnidentifiedImageError and Pillow's decoder errors are OSErrors without an errno
        if error.errno is not None:
            raise ImageReadError.of(path, error) from error
        raise ImageDecodeError(f"{type(error).__name__}: {error}") from error
    # DecompressionBombError is not an OSError; SyntaxError and ValueError come from damaged headers.
    except (*FORMAT_ERRORS, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{type(error).__name__}: {error}") from error
    except MemoryError as error:
        error.add_note(f"while decoding {path}: not counted as a bad file; decode with fewer data.decode_workers")
        raise
    array = np.asarray(decoded, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def eight_bit(image):
    """``image`` with integer gray of more than 8 bits scaled to 8-bit gray (``L``); any other image as it is."""
    from PIL import Image

    if image.mode != "I" and not image.mode.startswith("I;"):
        return image
    values = np.asarray(image).astype(np.int64).clip(0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


# Pillow modes without colour: bilevel, gray (with alpha), 32-bit integer and float gray, and 16-bit gray ("I;16...").
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})


def stored_in_colour(path: str | Path) -> bool | None:
    """Whether the image file is stored in colour (module rules), from its header; None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in GRAY_MODES or mode.startswith("I;"):
                return False
            if mode in ("P", "PA"):
                palette = image.getpalette() or []
                return any(len(set(palette[start : start + 3])) > 1 for start in range(0, len(palette) - 2, 3))
            return True
    except Exception:  # noqa: BLE001 - a bad file is the decoder's to count and report
        return None


def decode_image(path: str | Path, size: int, channels: int, fix: str) -> np.ndarray:
    """``decode_image_file`` for one file that must be an image: a ``DataError`` naming it, its reason
    and ``fix`` otherwise."""
    try:
        return decode_image_file(path, size, channels)
    except ImageDecodeError as error:
        raise DataError(f"{path} could not be decoded as an image ({error}); {fix}") from error

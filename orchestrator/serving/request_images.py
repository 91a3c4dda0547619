"""Images sent in a request (HTTP body, base64 in JSON, a pyfunc DataFrame), checked and decoded for a query model.

Rules, shared by every served form of the query side (``cmpnas serve``, the MLflow pyfunc model):

* a request's image is bytes; the bytes are decoded exactly as the data loader decodes a file
  (``decode_image_file``: gray or RGB, resized to the export's input size, uint8 (C, H, W)), so a
  served query embeds what ``cmpnas query`` embeds;
* every way the bytes can be wrong is the client's fault and raises ``BadRequestError`` with the
  reason and an HTTP status: 413 for bytes over ``RequestLimits.max_image_bytes``, 400 for
  anything else (not an image, truncated, a decompression bomb over ``MAX_IMAGE_PIXELS``, a
  channel count the export cannot take, base64 that does not decode);
* channels: the export's channel count is what the model takes. A colour image sent to a gray
  model is converted to gray, as the loader does; an image whose stored channels cannot be
  converted (e.g. a 2-channel float TIFF) is refused with the reason;
* ``k`` must lie in 1..``RequestLimits.max_k``.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np

from search_space.errors import CmpnasError
from workers.datasets.image_files import ImageDecodeError, decode_image_file


class BadRequestError(CmpnasError, ValueError):
    """A request the server cannot answer because of what it holds; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold: bytes per image, images per request, and the largest ``k``."""

    max_image_bytes: int = 20 * 1024 * 1024
    max_images: int = 64
    max_k: int = 1000


def decode_request_image(data: bytes, size: int, channels: int, limits: RequestLimits = RequestLimits()) -> np.ndarray:
    """The image in ``data`` as uint8 (``channels``, ``size``, ``size``); ``BadRequestError`` with the reason if not."""
    if len(data) > limits.max_image_bytes:
        raise BadRequestError(f"the image is {len(data)} bytes, over the limit of {limits.max_image_bytes}: "
                              "send a smaller image", status=413)
    if not data:
        raise BadRequestError("the image is empty: send the bytes of a PNG, JPEG or other image file")
    try:
        return decode_image_file(io.BytesIO(data), size, channels)
    except ImageDecodeError as error:
        raise BadRequestError(f"the image could not be decoded ({error}): send a whole PNG, JPEG or other "
                              "image file") from error


def decode_base64_image(text: str, size: int, channels: int, limits: RequestLimits = RequestLimits()) -> np.ndarray:
    """``decode_request_image`` of base64 text (standard alphabet, padding required)."""
    if not isinstance(text, str):
        raise BadRequestError(f"an image must be a base64 string, got {type(text).__name__}")
    if len(text) > limits.max_image_bytes * 4 // 3 + 4:
        raise BadRequestError(f"the base64 image is {len(text)} characters, over the limit of "
                              f"{limits.max_image_bytes} bytes: send a smaller image", status=413)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequestError(f"the image is not valid base64 ({error}): encode the file's bytes with "
                              "standard base64") from error
    return decode_request_image(data, size, channels, limits)


def check_k(k: object, limits: RequestLimits = RequestLimits()) -> int:
    """``k`` as an int in 1..``limits.max_k``; ``BadRequestError`` naming the allowed range otherwise."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
        raise BadRequestError(f"k must be an integer from 1 to {limits.max_k}, got {k!r}")
    return k

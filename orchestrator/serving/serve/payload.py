"""The images and ``k`` of one HTTP request to ``cmpnas serve``, read within the body limit.

A request is one of:

* ``multipart/form-data``: one or more files (any field name; the file name names the image), and
  optionally a field ``k``;
* ``application/json``: ``{"images": ["<base64>", ...], "k": 5}`` (``k`` optional);
* ``image/*`` or ``application/octet-stream``: the body is one image.

``k`` not in the body may be given as the query parameter ``?k=``; else the server's default.
Every fault is ``BadRequestError`` with its status: 413 for a body over the limit (checked on the
declared length first, then on the bytes as they arrive, so an oversized body is never held), 415
for another content type, 400 for the rest. Images are decoded by ``request_images`` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from orchestrator.serving.request_images import (
    BadRequestError,
    RequestLimits,
    check_k,
    decode_base64_image,
    decode_request_image,
)

RAW_TYPES = ("application/octet-stream",)


@dataclass(frozen=True)
class ImageShape:
    """What the export takes: square images of ``size`` pixels with ``channels`` channels."""

    size: int
    channels: int


@dataclass(frozen=True)
class QueryImages:
    """A request's images, decoded (N, C, H, W) uint8, their names, and its ``k``."""

    names: tuple[str, ...]
    images: np.ndarray
    k: int


async def read_query(request: Request, shape: ImageShape, limits: RequestLimits, max_body_bytes: int,
                     k_default: int) -> QueryImages:
    """The request's images and ``k``; ``BadRequestError`` with the reason and status if it has none to give."""
    body = await read_body(request, max_body_bytes)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    k_given = request.query_params.get("k")
    if kind == "application/json":
        names, images, k_given = _from_json(body, shape, limits, k_given)
    elif kind == "multipart/form-data":
        names, images, k_given = await _from_form(request, body, shape, limits, k_given)
    elif kind.startswith("image/") or kind in RAW_TYPES:
        names, images = ("0",), [decode_request_image(body, shape.size, shape.channels, limits)]
    else:
        raise BadRequestError(f"content type {kind or 'none'!r} is not served: send multipart/form-data (files), "
                              "application/json ({\"images\": [base64, ...], \"k\": 5}) or an image/* body",
                              status=415)
    k = check_k(k_default if k_given is None else _as_int(k_given), limits)
    return QueryImages(tuple(names), np.stack(images), k)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> BadRequestError:
    return BadRequestError(f"the request body is {size} or more bytes, over the limit of {limit}: send fewer or "
                           "smaller images per request (the server's --max-body-mb)", status=413)


def _from_json(body: bytes, shape: ImageShape, limits: RequestLimits, k_given):
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequestError(f"the body is not valid JSON ({error}): send {{\"images\": [base64, ...], "
                              "\"k\": 5}") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise BadRequestError("the JSON body must be an object with \"images\": a list of base64 strings "
                              "(and optionally \"k\")")
    texts = payload["images"]
    _check_count(len(texts), limits)
    images = [decode_base64_image(text, shape.size, shape.channels, limits) for text in texts]
    return [str(position) for position in range(len(texts))], images, payload.get("k", k_given)


async def _from_form(request: Request, body: bytes, shape: ImageShape, limits: RequestLimits, k_given):
    async def once():
        yield body
        yield b""

    parser = MultiPartParser(request.headers, once(), max_files=limits.max_images + 1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise BadRequestError(f"the multipart body could not be read ({error.message}): send files as "
                              "multipart/form-data") from error
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    _check_count(len(files), limits)
    images = [decode_request_image(await file.read(), shape.size, shape.channels, limits) for file in files]
    names = [file.filename or str(position) for position, file in enumerate(files)]
    k_field = form.get("k")
    return names, images, k_field if isinstance(k_field, str) else k_given


def _check_count(count: int, limits: RequestLimits) -> None:
    if count == 0:
        raise BadRequestError("the request holds no image: send at least one")
    if count > limits.max_images:
        raise BadRequestError(f"the request holds {count} images, over the limit of {limits.max_images}: "
                              "split it into several requests")


def _as_int(value):
    """An integer given as text (a form field, a query parameter) as int; anything else as it is, for check_k."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return value
    return value

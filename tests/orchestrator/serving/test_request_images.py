"""Images in requests: decoded as the loader decodes files, every bad request a BadRequestError with its status."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from orchestrator.serving.request_images import (
    BadRequestError, RequestLimits, check_k, decode_base64_image, decode_request_image,
)
from workers.datasets.image_files import decode_image_file


def _png(size=(40, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    values = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(values).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_request_bytes_decode_as_the_loader_decodes_the_file(tmp_path):
    data = _png()
    (tmp_path / "a.png").write_bytes(data)
    decoded = decode_request_image(data, 28, 1)
    assert decoded.shape == (1, 28, 28) and decoded.dtype == np.uint8
    assert np.array_equal(decoded, decode_image_file(tmp_path / "a.png", 28, 1))
    assert np.array_equal(decode_base64_image(base64.b64encode(data).decode(), 28, 3),
                          decode_image_file(tmp_path / "a.png", 28, 3))


@pytest.mark.parametrize("data, status, reason", [
    (b"not an image at all", 400, "could not be decoded"),
    (_png()[:60], 400, "could not be decoded"),
    (b"", 400, "empty"),
    (b"x" * 2048, 413, "over the limit"),
])
def test_bad_image_bytes_are_refused_with_their_status(data, status, reason):
    with pytest.raises(BadRequestError, match=reason) as caught:
        decode_request_image(data, 28, 1, RequestLimits(max_image_bytes=1024))
    assert caught.value.status == status


def test_a_decompression_bomb_is_refused_before_it_is_decoded():
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")  # 100 megapixels in a few kilobytes
    with pytest.raises(BadRequestError, match="above the limit") as caught:
        decode_request_image(buffer.getvalue(), 28, 1)
    assert caught.value.status == 400


def test_malformed_base64_and_k_out_of_range_are_refused():
    with pytest.raises(BadRequestError, match="not valid base64"):
        decode_base64_image("%%%not base64", 28, 1)
    with pytest.raises(BadRequestError, match="must be a base64 string"):
        decode_base64_image(123, 28, 1)
    for k in (0, 1001, "5", 2.0, True):
        with pytest.raises(BadRequestError, match="from 1 to 1000"):
            check_k(k)
    assert check_k(7) == 7

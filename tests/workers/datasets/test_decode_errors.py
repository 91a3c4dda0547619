"""What a file's decoding may end in: a bad file (its format), an error that leaves nothing recorded
(the system's), and pixels scaled, never clipped (16-bit gray); JPEGs decoded at a reduced scale."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from workers.datasets.decoding import DecodeSettings, decode_files
from workers.datasets.image_files import ImageReadError, decode_image_file
from workers.datasets.image_folder import list_image_folder

REPO = Path(__file__).resolve().parents[3]


def _collection(root: Path) -> Path:
    """Two classes of six gray PNGs, and one corrupt file."""
    rng = np.random.default_rng(0)
    for label in range(2):
        (root / f"class_{label}").mkdir(parents=True)
        for index in range(6):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(root / f"class_{label}" / f"{index}.png")
    (root / "class_0" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def _failing_open(monkeypatch, victim: Path, error: BaseException) -> None:
    """Pillow's open raising ``error`` for ``victim`` only, as a disk, a file system or the kernel would."""
    real_open = Image.open

    def open_image(fp, *args, **kwargs):
        if str(fp) == str(victim):
            raise error
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_image)


def test_an_os_error_while_reading_is_not_a_bad_file_and_leaves_no_cache(tmp_path, monkeypatch):
    root = _collection(tmp_path / "images")
    cache = tmp_path / "cache"
    settings = DecodeSettings(12, 1, streaming=True, cache_root=str(cache), workers=2, max_bad_fraction=0.5)
    victim = root / "class_1" / "3.png"
    _failing_open(monkeypatch, victim, OSError(errno.EIO, "Input/output error", str(victim)))
    with pytest.raises(ImageReadError, match=r"class_1/3\.png .*Input/output error.*not counted as a bad file"):
        decode_files(list_image_folder(root), settings)
    assert not list(cache.glob("*/cache.json")) and not list(cache.glob(".*partial*"))  # nothing recorded
    monkeypatch.undo()
    # The next run, the disk healthy again, decodes the file; only the corrupt one is bad, and recorded.
    decoded = decode_files(list_image_folder(root), settings)
    assert [bad.id for bad in decoded.bad] == ["class_0/corrupt.png"]
    (record,) = [json.loads(path.read_text()) for path in cache.glob("*/cache.json")]
    assert list(record["bad"].values()) == [decoded.bad[0].reason] and "UnidentifiedImageError" in decoded.bad[0].reason


def test_a_memory_error_propagates_naming_the_file(tmp_path, monkeypatch):
    root = _collection(tmp_path / "images")
    victim = root / "class_0" / "2.png"
    _failing_open(monkeypatch, victim, MemoryError())
    with pytest.raises(MemoryError) as caught:
        decode_files(list_image_folder(root), DecodeSettings(12, 1, workers=1, max_bad_fraction=0.5))
    assert any(str(victim) in note for note in caught.value.__notes__)


def test_too_many_open_files_is_an_error_not_a_bad_file(tmp_path):
    """A real EMFILE: the open-file limit lowered to the descriptors already open, in a child process."""
    root = _collection(tmp_path / "images")
    script = textwrap.dedent(f"""
        import os, resource
        from workers.datasets.decoding import DecodeSettings, decode_files
        from workers.datasets.image_files import ImageReadError, decode_image_file
        from workers.datasets.image_folder import list_image_folder
        listing = list_image_folder({str(root)!r})
        decode_image_file(listing.paths[0], 12, 1)  # Pillow's plugins imported while files may still be opened
        lowest_free = os.dup(0)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        try:
            decoded = decode_files(listing, DecodeSettings(12, 1, workers=1, max_bad_fraction=1.0))
            print("BAD FILES", len(decoded.bad))
        except ImageReadError as error:
            print("READ ERROR", error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "READ ERROR cannot read" in result.stdout, result.stdout + result.stderr
    assert "Too many open files" in result.stdout


@pytest.mark.parametrize("suffix", [".png", ".tif", ".pgm"])
def test_16_bit_gray_is_scaled_to_8_bits_not_clipped(tmp_path, suffix):
    values = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("I;16", "I;16B", "I")  # what Pillow opens such a file as
    expected = ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    gray = decode_image_file(path, 16, 1)
    np.testing.assert_array_equal(gray[0], expected)  # 16 px to 16 px: the resize changes nothing
    assert len(np.unique(gray)) > 200  # Pillow's own conversion leaves 2 values, 0-254 and 255
    np.testing.assert_array_equal(decode_image_file(path, 16, 3), np.repeat(gray, 3, axis=0))


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    height, width = 600, 800
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = np.stack([rows * 255 // height, columns * 255 // width, (rows + columns) * 255 // (height + width)], -1)
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    loaded = []
    real_load = JpegImagePlugin.JpegImageFile.load

    def load(self):
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    decoded = decode_image_file(path, 64, 3)
    assert loaded[0] == (100, 75)  # 1/8 scale: the largest reduction that still covers 64 x 64
    with Image.open(path) as image:
        full = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(decoded.astype(int) - full).mean() < 2  # the same picture


def test_a_read_error_survives_the_trip_from_a_trial_to_the_driver(tmp_path):
    import pickle

    error = ImageReadError.of(tmp_path / "a.png", OSError(errno.ESTALE, "Stale file handle"))
    assert str(pickle.loads(pickle.dumps(error))) == str(error) and "Stale file handle" in str(error)

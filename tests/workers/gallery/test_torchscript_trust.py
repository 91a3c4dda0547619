"""A TorchScript gallery model is code: refused without ``gallery.allow_torchscript``, and a file whose
bytes differ from the recorded fingerprint is refused before ``torch.jit.load`` ever runs it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from workers.gallery.sources import (
    GalleryLoader,
    GallerySourceError,
    GallerySourceRequest,
    InputSpecRequest,
    load_gallery_model,
)

SPEC = InputSpecRequest(size=8, channels=1, mean=(0.5,), std=(0.25,))


class _Embedder(torch.nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :4] * self.scale


def _scripted(path: Path, scale: float = 1.0) -> Path:
    torch.jit.script(_Embedder(scale)).save(str(path))
    return path


def _request(path: Path, **extra) -> GallerySourceRequest:
    return GallerySourceRequest(path=path, input=SPEC, data_channels=1, data_image_size=8, **extra)


@pytest.fixture
def no_load(monkeypatch):
    """torch.jit.load fails the test if anything calls it."""
    def refuse(*_args, **_kwargs):
        pytest.fail("torch.jit.load ran a file that should have been refused before loading")

    monkeypatch.setattr(torch.jit, "load", refuse)


def test_torchscript_is_refused_without_the_opt_in(tmp_path, no_load):
    with pytest.raises(GallerySourceError, match="gallery.allow_torchscript"):
        load_gallery_model("torchscript", _request(_scripted(tmp_path / "m.pt")))


def test_a_file_with_the_recorded_fingerprint_loads(tmp_path):
    model = load_gallery_model("torchscript", _request(_scripted(tmp_path / "m.pt"), allow_torchscript=True))
    again = load_gallery_model("torchscript", _request(tmp_path / "m.pt", allow_torchscript=True,
                                                       expected_fingerprint=model.fingerprint))
    assert again.fingerprint == model.fingerprint and again.embed_dim == 4


def test_a_tampered_file_is_refused_before_it_is_loaded(tmp_path, monkeypatch):
    path = _scripted(tmp_path / "m.pt")
    recorded = load_gallery_model("torchscript", _request(path, allow_torchscript=True)).fingerprint
    _scripted(path, scale=2.0)  # another module at the recorded path
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("the tampered file was loaded"))
    request = _request(path, allow_torchscript=True)
    with pytest.raises(GallerySourceError, match=f"the job recorded {recorded[:12]}.*was not loaded"):
        load_gallery_model("torchscript", replace(request, expected_fingerprint=recorded))
    # A trial or Ray actor opening the job's model on its node: refused unrun too.
    with pytest.raises(GallerySourceError, match="was not loaded"):
        GalleryLoader("torchscript", request).open_matching(recorded)
    with pytest.raises(GallerySourceError, match="was not loaded"):  # what Ray Data's embedding actors get
        GalleryLoader("torchscript", request).expecting(recorded).open()


def test_a_path_that_is_not_a_readable_file_is_a_clear_error(tmp_path):
    with pytest.raises(GallerySourceError, match="cannot be read"):
        load_gallery_model("torchscript", _request(tmp_path, allow_torchscript=True))  # a folder

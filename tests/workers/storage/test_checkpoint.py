import pickle

import pytest
import torch

from workers.gallery.model import GalleryArchitecture, GalleryEmbeddingNet, load_gallery, save_gallery
from workers.storage.checkpoint import CheckpointError, load_checkpoint

ARCH = GalleryArchitecture(backbone="resnet10t", embed_dim=32, num_classes=3, in_chans=1, image_size=28)


def _saved(tmp_path):
    torch.manual_seed(0)
    model = GalleryEmbeddingNet(ARCH).eval()
    path = tmp_path / "gallery.safetensors"
    fingerprint = save_gallery(path, model, (0.5,), (0.25,), {"note": "test"})
    return model, path, fingerprint


def test_gallery_round_trip_keeps_outputs_fingerprint_and_metadata(tmp_path):
    model, path, fingerprint = _saved(tmp_path)
    loaded = load_gallery(path)
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(images), loaded.model(images), atol=1e-6)
    assert loaded.fingerprint == fingerprint and len(fingerprint) == 64
    assert loaded.mean == (0.5,) and loaded.info["note"] == "test"
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert save_gallery(tmp_path / "again.safetensors", model, (0.5,), (0.25,), {}) == fingerprint


def test_flipped_bytes_fail_the_integrity_check(tmp_path):
    _, path, _ = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="integrity|not a readable"):
        load_gallery(path)


def test_truncated_or_missing_checkpoint_is_refused(tmp_path):
    _, path, _ = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_gallery(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_gallery(tmp_path / "nope.safetensors")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_without_being_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    torch.save({"state": _Payload(str(marker))}, tmp_path / "evil2.pt")
    for candidate in (path, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="never unpickles"):
            load_checkpoint(candidate)
    assert not marker.exists()

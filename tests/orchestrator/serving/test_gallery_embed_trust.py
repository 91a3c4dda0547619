"""`cmpnas gallery embed` resumed on a folder: the gallery model its shards came from is checked before
the configured file is loaded (a TorchScript file runs code when loaded)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.config import validate_config
from orchestrator.serving.embed.job import GalleryEmbedRequest, embed_configured_gallery
from tests.conftest import tiny_tree
from workers.gallery.sources import GallerySourceError


class _Embedder(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :4]


def test_a_resumed_folder_refuses_another_torchscript_file_before_loading_it(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        Image.fromarray(np.full((28, 28), 40 * index, dtype=np.uint8)).save(images / f"{index}.png")
    model = tmp_path / "gallery.pt"
    torch.jit.script(_Embedder()).save(str(model))
    shards = tmp_path / "out" / "shards"
    shards.mkdir(parents=True)
    (shards / "listing.json").write_text(json.dumps({"gallery_fingerprint": "0" * 64}))  # another model's shards
    config = validate_config(tiny_tree(tmp_path, gallery={"source": "torchscript", "path": str(model),
                                                          "allow_torchscript": True, "checkpoint": None,
                                                          "input": {"size": 28, "channels": 1, "mean": [0.5], "std": [0.25]}}))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("the file was loaded before the check"))
    with pytest.raises(GallerySourceError, match="was not loaded"):
        embed_configured_gallery(config, GalleryEmbedRequest(output_dir=tmp_path / "out", images=images))

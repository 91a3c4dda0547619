"""`cmpnas gallery export`: the cmpnas gallery model as ONNX that `gallery.source: onnx` reads without config."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import validate_config
from orchestrator.export.gallery_model import GalleryExportError, export_configured_gallery
from tests.orchestrator.serving.helpers import (
    image_folder_config_tree,
    open_tiny_gallery,
    save_tiny_gallery,
    write_image_folder,
)
from workers.gallery.sources import GallerySourceRequest, InputSpecRequest, load_gallery_model
from workers.gallery.sources.onnx_model import METADATA_KEY


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("serving") / "images", per_class=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_gallery(tmp_path_factory.mktemp("gallery") / "gallery.safetensors")


def _cli(tmp_path, tree, *args):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    result = CliRunner().invoke(app, ["gallery", "export", "--config", str(config), *args], env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


def test_the_exported_onnx_embeds_like_the_checkpoint_and_carries_its_input_spec(image_root, checkpoint, tmp_path):
    tree = image_folder_config_tree(image_root, checkpoint, tmp_path / "out")
    code, text = _cli(tmp_path, tree, "--output", str(tmp_path / "exported"))
    assert code == 0, text
    onnx_path = tmp_path / "exported" / "gallery.onnx"
    record = json.loads((tmp_path / "exported" / "gallery.json").read_text())
    cmpnas = open_tiny_gallery(checkpoint)
    assert record["fingerprint"] == record["source_fingerprints"]["cmpnas"] == cmpnas.fingerprint
    assert record["input"] == cmpnas.input_spec.to_dict() and record["embed_dim"] == cmpnas.embed_dim
    assert record["onnx"]["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert record["onnx"]["parity_max_abs_difference"] <= 1e-4
    metadata = {entry.key: entry.value for entry in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(metadata[METADATA_KEY]) == cmpnas.input_spec.to_dict()

    # No gallery.input, and data of another shape: the spec can only come from the file's metadata.
    exported = load_gallery_model("onnx", GallerySourceRequest(path=onnx_path, input=InputSpecRequest(),
                                                               data_channels=3, data_image_size=28))
    assert exported.input_spec == cmpnas.input_spec
    assert exported.fingerprint == record["source_fingerprints"]["onnx"] != cmpnas.fingerprint
    images = np.random.default_rng(0).integers(0, 256, (7, 1, 16, 16), dtype=np.uint8)
    ids = [str(index) for index in range(7)]
    np.testing.assert_allclose(exported.embed(images, ids, "cpu"), cmpnas.embed(images, ids, "cpu"), atol=1e-4)


def test_only_a_trained_cmpnas_gallery_model_is_exported(image_root, checkpoint, tmp_path):
    tree = image_folder_config_tree(image_root, checkpoint, tmp_path / "out")
    foreign = {**tree, "gallery": {"source": "onnx", "path": str(tmp_path / "team.onnx")}}
    with pytest.raises(GalleryExportError, match="team's own format already"):
        export_configured_gallery(validate_config(foreign), tmp_path / "x")
    untrained = {**tree, "gallery": {**tree["gallery"], "checkpoint": str(tmp_path / "none.safetensors")}}
    code, text = _cli(tmp_path, untrained, "--output", str(tmp_path / "x"))
    assert code == 2 and "cmpnas gallery train" in text

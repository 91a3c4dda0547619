"""`cmpnas gallery train` with a validation split trains as a search would: on train less the validation
images, early-stopped on them, and a search with the same split uses the checkpoint it saved."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import validate_config
from orchestrator.setup.data import load_search_data
from orchestrator.setup.gallery import gallery_training_settings, obtain_gallery
from tests.conftest import tiny_tree
from workers.gallery.model import load_gallery
from workers.storage.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A gallery model trained by the CLI, 2 epochs at most, patience 1, on 1,500 - 300 images."""
    folder = tmp_path_factory.mktemp("gallery-train")
    tree = tiny_tree(folder, data={"train_size": 1500, "validation_size": 300, "query_size": 300, "gallery_size": 600},
                     gallery={"epochs": 2, "patience": 1})
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    result = CliRunner().invoke(app, ["gallery", "train", "--config", str(path)], env={"COLUMNS": "200"})
    return tree, result


def test_it_trains_on_train_less_validation_and_records_the_curve(trained):
    tree, result = trained
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # the console wraps long lines
    assert "on 1200 images" in output and "paragon (gallery/gallery): R@1" in output
    info = load_gallery(tree["gallery"]["checkpoint"]).info
    assert info["train_images"] == 1200
    assert info["split"]["validation_size"] == 300
    assert info["training_precision"] == "float32"  # gallery.mixed_precision is off by default
    curve = info["validation_curve"]
    assert 1 <= len(curve) <= 2 and all("validation_map" in point for point in curve)
    assert info["early_stopping"]["patience"] == 1 and info["early_stopping"]["validation_images"] == 300


def test_a_search_with_the_same_split_uses_it_and_another_split_is_refused(trained):
    tree, result = trained
    assert result.exit_code == 0, result.output
    config = validate_config(tree)
    selection = load_search_data(config).selection
    messages: list[str] = []
    obtain_gallery(config, selection, "cpu", messages.append)
    assert any("using gallery checkpoint" in message for message in messages), messages
    assert not any("training gallery model" in message for message in messages)

    other = validate_config({**tree, "data": {**tree["data"], "validation_size": 200}})
    with pytest.raises(CheckpointError, match="another split"):
        obtain_gallery(other, load_search_data(other).selection, "cpu", messages.append)


def test_gallery_mixed_precision_reaches_the_training_settings(tmp_path):
    tree = tiny_tree(tmp_path, gallery={"mixed_precision": True})
    assert gallery_training_settings(validate_config(tree), 100).mixed_precision is True
    assert gallery_training_settings(validate_config(tiny_tree(tmp_path)), 100).mixed_precision is False

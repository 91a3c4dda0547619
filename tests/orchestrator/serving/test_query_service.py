"""`cmpnas query`: an exported query model against an embedded gallery, nearest ids as JSON lines."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.serving.embed import EmbedOptions, embed_collection, folder_collection
from orchestrator.serving.index import GalleryIndexError
from orchestrator.serving.query import QueryError, query_images
from tests.orchestrator.serving.helpers import (  # noqa: F401 - checkpoint, image_root: fixtures
    checkpoint,
    image_root,
    open_tiny_gallery,
    save_tiny_gallery,
    write_image_folder,
    write_query_export,
)


@pytest.fixture(scope="module")
def export_dir(checkpoint, tmp_path_factory):
    """A query model export whose network is the gallery model: each gallery image finds itself first."""
    return write_query_export(tmp_path_factory.mktemp("export") / "query-model", checkpoint)


@pytest.fixture(scope="module")
def index_dir(checkpoint, image_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("index") / "gallery"
    return embed_collection(open_tiny_gallery(checkpoint), folder_collection(image_root), folder, EmbedOptions(index_factory="HNSW32")).folder


def test_each_gallery_image_finds_itself_first_best_first(export_dir, index_dir, image_root):
    results = query_images(export_dir, index_dir, [image_root], k=5)
    assert [result.image for result in results] == [str(path) for path in sorted(image_root.rglob("*.png"))]
    for result in results:
        ids, scores = [match.id for match in result.matches], [match.score for match in result.matches]
        assert ids[0] == str(result.image)[len(str(image_root)) + 1:] and scores[0] > 0.9999
        assert len(ids) == 5 and scores == sorted(scores, reverse=True)
    assert len(query_images(export_dir, index_dir, [image_root / "cross" / "000.png"], k=100)[0].matches) == 48


def test_the_command_prints_one_json_line_per_image(export_dir, index_dir, image_root):
    images = [image_root / "square" / "003.png", image_root / "circle" / "011.png"]
    result = CliRunner().invoke(app, ["query", "--model", str(export_dir), "--index", str(index_dir), "--k", "2",
                                      *map(str, images)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["image"] for line in lines] == [str(path) for path in images]
    assert [line["results"][0]["id"] for line in lines] == ["square/003.png", "circle/011.png"]
    assert all(len(line["results"]) == 2 and set(line["results"][0]) == {"id", "score"} for line in lines)


def test_a_gallery_of_another_gallery_model_is_refused_unless_forced(export_dir, image_root, tmp_path):
    other = open_tiny_gallery(save_tiny_gallery(tmp_path / "other.safetensors", seed=1))
    foreign = embed_collection(other, folder_collection(image_root), tmp_path / "foreign").folder
    with pytest.raises(QueryError, match=r"fingerprint .*would not be comparable.*--force"):
        query_images(export_dir, foreign, [image_root / "cross"], k=1)
    assert len(query_images(export_dir, foreign, [image_root / "cross"], k=1, force=True)) == 12
    result = CliRunner().invoke(app, ["query", "--model", str(export_dir), "--index", str(foreign),
                                      str(image_root / "cross")], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "--force" in " ".join(result.output.split())


def test_embedding_sizes_that_differ_are_refused_even_when_forced(export_dir, index_dir, image_root, tmp_path):
    wider = shutil.copytree(export_dir, tmp_path / "wider")
    manifest = json.loads((wider / "compatibility.json").read_text())
    manifest["embedding"]["dim"] = 32
    (wider / "compatibility.json").write_text(json.dumps(manifest))
    with pytest.raises(QueryError, match="embeds into 32 dimensions, the gallery .* into 16"):
        query_images(wider, index_dir, [image_root], force=True)


def test_an_unfinished_gallery_folder_and_missing_images_are_clear_errors(export_dir, index_dir, image_root,
                                                                           tmp_path):
    unfinished = shutil.copytree(index_dir, tmp_path / "unfinished")
    (unfinished / "gallery.json").unlink()
    with pytest.raises(GalleryIndexError, match="unfinished"):
        query_images(export_dir, unfinished, [image_root])
    with pytest.raises(QueryError, match="neither an image file nor a folder"):
        query_images(export_dir, index_dir, [tmp_path / "missing.png"])

"""Colour is a choice: a file collection of colour images with data.channels unset is refused, never turned gray.

The rule (``workers.datasets.image_folder.choose_channels``, ``orchestrator.setup.data.requested_channels``):
with ``data.channels`` unset, a file collection whose sampled headers are all gray loads as 1 channel (as
before); one with colour images is refused before anything is decoded, naming data.channels and what 1 and 3
do. Set explicitly, either value works on either kind of collection; the built-in sets are unaffected, and a
recorded search (which holds every field) keeps the channels it ran with.
"""

import csv

import numpy as np
import pytest
from PIL import Image

from orchestrator.config import validate_config
from orchestrator.setup.data import load_data, requested_channels
from workers.datasets import DataError, DataRequest, load_retrieval_data
from workers.datasets.image_files import stored_in_colour
from workers.datasets.image_folder import CHANNEL_SAMPLE


def _folder(root, colour: bool, classes=("a", "b", "c"), per_class=10, size=12, gray_except=None):
    """root/<class>/<i>.png: RGB images with a tint per class when ``colour``, else 8-bit gray."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            if colour or (gray_except is not None and (name, index) == gray_except):
                pixels = (rng.integers(0, 60, (size, size, 3)) + np.array([60 * label, 30, 200 - 60 * label]))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB").save(root / name / f"{index}.png")
            else:
                Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / name / f"{index}.png")
    return root


def _request(root, channels, tmp_path, **changes):
    return DataRequest(root=str(root), image_size=12, channels=channels, train_size=None, query_size=6,
                       gallery_size=9, cache_dir=str(tmp_path / "cache"), **changes)


def test_a_colour_folder_without_data_channels_is_refused_before_decoding_naming_both_choices(tmp_path):
    root = _folder(tmp_path / "photos", colour=True)
    with pytest.raises(DataError) as refused:
        load_retrieval_data("image_folder", _request(root, None, tmp_path))
    message = str(refused.value)
    assert "colour images" in message and "data.channels is not set" in message
    assert "data.channels: 3" in message and "RGB" in message
    assert "data.channels: 1" in message and "gray" in message
    assert "--set data.channels=3" in message and "a/0.png" in message
    assert not (tmp_path / "cache").exists()  # refused from the headers: nothing was decoded


def test_a_gray_folder_without_data_channels_loads_as_one_channel_exactly_as_before(tmp_path):
    root = _folder(tmp_path / "gray", colour=False)
    unset = load_retrieval_data("image_folder", _request(root, None, tmp_path, streaming=False))
    explicit = load_retrieval_data("image_folder", _request(root, 1, tmp_path, streaming=False))
    assert unset.in_chans == 1
    for split in ("train", "query", "gallery"):
        assert np.array_equal(getattr(unset, split).images, getattr(explicit, split).images)
        assert np.array_equal(getattr(unset, split).ids, getattr(explicit, split).ids)


def test_an_explicit_choice_loads_a_colour_folder_either_way(tmp_path):
    root = _folder(tmp_path / "photos", colour=True)
    rgb = load_retrieval_data("image_folder", _request(root, 3, tmp_path, streaming=False))
    gray = load_retrieval_data("image_folder", _request(root, 1, tmp_path, streaming=False))
    assert rgb.in_chans == 3 and gray.in_chans == 1
    assert rgb.train.images[:, 0].mean() != rgb.train.images[:, 2].mean()  # the colour is there


def test_one_colour_image_among_the_sampled_gray_ones_is_enough_to_ask(tmp_path):
    root = _folder(tmp_path / "mixed", colour=False, gray_except=("c", 9))  # the last file: always sampled
    with pytest.raises(DataError, match=r"holds colour images \(e.g. \['c/9.png'\]\)"):
        load_retrieval_data("image_folder", _request(root, None, tmp_path))


def test_a_manifest_of_colour_images_is_refused_the_same_way(tmp_path):
    _folder(tmp_path / "photos", colour=True, per_class=4)  # the manifest below lists its files
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "split"))
        for name in ("a", "b", "c"):
            writer.writerows((f"photos/{name}/{index}.png", name, ("train", "train", "query", "gallery")[index])
                             for index in range(4))
    with pytest.raises(DataError, match=r"manifest .*holds colour images.*data.channels: 3"):
        load_retrieval_data("manifest", DataRequest(root=str(manifest), image_size=12, channels=None,
                                                    streaming=False))
    assert load_retrieval_data("manifest", DataRequest(root=str(manifest), image_size=12, channels=3,
                                                       streaming=False)).in_chans == 3


def test_the_sample_is_bounded_and_spread_over_the_collection(tmp_path, monkeypatch):
    root = _folder(tmp_path / "gray", colour=False, classes=("a", "b"), per_class=CHANNEL_SAMPLE)
    opened = []
    monkeypatch.setattr("workers.datasets.image_folder.stored_in_colour",
                        lambda path: opened.append(str(path)) or False)
    data = load_retrieval_data("image_folder", _request(root, None, tmp_path, streaming=False))
    assert data.in_chans == 1
    assert len(opened) <= CHANNEL_SAMPLE
    assert {path.split("/")[-2] for path in opened} == {"a", "b"}  # both classes looked at, not the first only


@pytest.mark.parametrize("mode, colour", [("L", False), ("LA", False), ("1", False), ("I;16", False), ("I", False),
                                          ("F", False), ("RGB", True), ("RGBA", True), ("CMYK", True)])
def test_stored_in_colour_reads_the_mode(tmp_path, mode, colour):
    suffix = ".tif" if mode in ("I;16", "I", "F", "CMYK") else ".png"
    path = tmp_path / f"image{suffix}"
    Image.new(mode, (4, 4)).save(path)
    assert stored_in_colour(path) is colour


def test_a_palette_image_is_colour_only_when_its_palette_is(tmp_path):
    gray, coloured = Image.new("P", (4, 4)), Image.new("P", (4, 4))
    gray.putpalette([value for level in range(256) for value in (level, level, level)])
    coloured.putpalette([value for level in range(256) for value in (level, 255 - level, 0)])
    gray.save(tmp_path / "gray.png")
    coloured.save(tmp_path / "colour.png")
    assert stored_in_colour(tmp_path / "gray.png") is False
    assert stored_in_colour(tmp_path / "colour.png") is True
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert stored_in_colour(tmp_path / "broken.png") is None  # left to the decoder to count as a bad file


def test_the_loader_is_asked_for_unset_channels_only_for_file_collections(tmp_path):
    folder = {"source": "image_folder", "root": str(tmp_path)}
    assert requested_channels(validate_config({"data": folder})) is None
    assert requested_channels(validate_config({"data": {**folder, "channels": 1}})) == 1
    assert requested_channels(validate_config({"data": {**folder, "channels": 3}})) == 3
    assert requested_channels(validate_config({"data": {"source": "manifest", "root": "m.csv"}})) is None
    # The built-in sets keep their value: Fashion-MNIST and ORL faces are gray.
    assert requested_channels(validate_config({})) == 1
    assert requested_channels(validate_config({"data": {"source": "orl_faces"}})) == 1
    # A recorded search holds every field (model_dump): resumed, it keeps the channels it ran with.
    recorded = validate_config({"data": folder}).model_dump(mode="json")
    assert recorded["data"]["channels"] == 1 and requested_channels(validate_config(recorded)) == 1


def test_load_data_refuses_a_colour_folder_unless_data_channels_is_set(tmp_path):
    root = _folder(tmp_path / "photos", colour=True)
    data = {"source": "image_folder", "root": str(root), "image_size": 12, "train_size": None, "query_size": 6,
            "gallery_size": 9, "streaming": "off"}
    with pytest.raises(DataError, match="data.channels is not set"):
        load_data(validate_config({"data": data}))
    assert load_data(validate_config({"data": {**data, "channels": 3}})).in_chans == 3


def test_a_resumed_search_is_exempt_from_the_checks_a_new_one_meets(tmp_path):
    """A resume runs as recorded: the colour choice and the space's image sizes were settled when it started
    (or predate these checks), and a resume may change neither."""
    from orchestrator.config import ConfigError
    from orchestrator.setup.inputs import prepare_search_inputs
    from workers.gallery.sources import GallerySourceError

    root = _folder(tmp_path / "photos", colour=True)
    config = validate_config({  # 12 px is outside mnv3_28's sizes, and channels is unset on a colour folder
        "data": {"source": "image_folder", "root": str(root), "image_size": 12, "train_size": None, "query_size": 6,
                 "gallery_size": 9, "streaming": "off"},
        "gallery": {"source": "onnx", "path": str(tmp_path / "missing.onnx")},
        "search_space": {"name": "mnv3_28"}, "output_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match="search_space.name='mnv3_28' is for images of"):
        prepare_search_inputs(config, print)
    with pytest.raises(GallerySourceError, match="missing.onnx"):  # past both checks and the data, at the gallery
        prepare_search_inputs(config, print, resumed=True)

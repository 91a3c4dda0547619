"""data.source: manifest: a CSV or Parquet table of path, label and split, used as given, and its bad inputs."""

import csv
import logging

import numpy as np
import pytest
from PIL import Image

from workers.datasets import DataError, DataRequest, load_retrieval_data
from workers.datasets.manifest import list_manifest


def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def _write_csv(path, rows, header=("path", "label", "split")):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _collection(folder):
    """Six classes: cat/dog/fox train, owl/pig/yak searched (2 query + 2 gallery each); a pixel value per image."""
    rows = []
    for label, name in enumerate(["cat", "dog", "fox", "owl", "pig", "yak"]):
        splits = ["train"] * 4 if label < 3 else ["query", "query", "gallery", "gallery"]
        for index, split in enumerate(splits):
            relative = f"images/{name}/{index}.png"
            _image(folder / relative, 40 * label + index)
            rows.append((relative, name, split))
    return rows


def _request(manifest, **changes):
    return DataRequest(root=str(manifest), image_size=8, streaming=False, **changes)


def test_a_csv_manifest_gives_the_splits_as_written(tmp_path):
    rows = _collection(tmp_path)
    rows[0] = ("./images//cat/0.png", "cat", " Train ")  # normalised id, split case and spaces ignored
    manifest = _write_csv(tmp_path / "data.csv", rows)
    data = load_retrieval_data("manifest", _request(manifest, query_size=1, gallery_size=1))
    assert data.name == f"manifest:{manifest}"
    assert data.class_names == ("cat", "dog", "fox", "owl", "pig", "yak")
    assert (len(data.train), len(data.query), len(data.gallery)) == (12, 6, 6)  # sizes do not apply
    assert set(data.train.labels.tolist()) == {0, 1, 2} and set(data.query.labels.tolist()) == {3, 4, 5}
    assert data.train.ids[0] == "images/cat/0.png"
    assert data.query.ids.tolist()[:2] == ["images/owl/0.png", "images/owl/1.png"]
    # Each image is the file its row names: pixel value 40 * label + index.
    assert data.gallery.images[0, 0, 0, 0] == 40 * 3 + 2
    assert data.protocol == "closed_set"


def test_a_parquet_manifest_reads_like_the_csv_and_absolute_paths_keep_their_ids(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    rows = _collection(tmp_path / "pictures")
    absolute = str(tmp_path / "pictures" / rows[0][0])
    rows[0] = (absolute, rows[0][1], rows[0][2])
    rows = [(path if path.startswith("/") else f"pictures/{path}", label, split) for path, label, split in rows]
    table = pyarrow.table({"path": [r[0] for r in rows], "label": [r[1] for r in rows],
                           "split": [r[2] for r in rows], "extra": list(range(len(rows)))})
    parquet.write_table(table, tmp_path / "data.parquet")
    _write_csv(tmp_path / "data.csv", rows)
    from_parquet = load_retrieval_data("manifest", _request(tmp_path / "data.parquet"))
    from_csv = load_retrieval_data("manifest", _request(tmp_path / "data.csv"))
    assert from_parquet.train.ids[0] == absolute
    for split in ("train", "query", "gallery"):
        a, b = getattr(from_parquet, split), getattr(from_csv, split)
        assert a.ids.tolist() == b.ids.tolist() and np.array_equal(a.labels, b.labels)
        assert np.array_equal(np.asarray(a.images), np.asarray(b.images))


def test_parquet_numbers_are_class_names_in_sorted_text_order(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    for index in range(6):
        _image(tmp_path / f"{index}.png", index)
    table = pyarrow.table({"path": [f"{index}.png" for index in range(6)], "label": [10, 2, 10, 2, 10, 2],
                           "split": ["train", "train", "query", "query", "gallery", "gallery"]})
    parquet.write_table(table, tmp_path / "m.pq")
    listing = list_manifest(tmp_path / "m.pq")
    assert listing.class_names == ("10", "2")
    assert listing.labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_streaming_into_a_given_cache_dir_gives_the_same_pixels(tmp_path):
    manifest = _write_csv(tmp_path / "data.csv", _collection(tmp_path))
    cache = tmp_path / "cache"
    streamed = load_retrieval_data("manifest", DataRequest(root=str(manifest), image_size=8, streaming=True,
                                                           cache_dir=str(cache)))
    in_memory = load_retrieval_data("manifest", _request(manifest))
    assert streamed.train.streamed and not in_memory.train.streamed
    assert any(cache.iterdir())
    for split in ("train", "query", "gallery"):
        assert np.array_equal(np.asarray(getattr(streamed, split).images), getattr(in_memory, split).images)


def test_train_size_caps_the_train_split_and_larger_is_refused(tmp_path):
    manifest = _write_csv(tmp_path / "data.csv", _collection(tmp_path))
    data = load_retrieval_data("manifest", _request(manifest, train_size=6, seed=3))
    assert len(data.train) == 6 and np.bincount(data.train.labels).tolist() == [2, 2, 2]
    assert (len(data.query), len(data.gallery)) == (6, 6)
    with pytest.raises(DataError, match=r"data.train_size=13 asks for more than the 12 images of the train split"):
        load_retrieval_data("manifest", _request(manifest, train_size=13))


def test_open_set_refuses_classes_on_both_sides_and_accepts_disjoint_ones(tmp_path):
    rows = _collection(tmp_path)
    manifest = _write_csv(tmp_path / "data.csv", rows)
    data = load_retrieval_data("manifest", _request(manifest, protocol="open_set"))
    assert data.protocol == "open_set" and data.num_classes == 6
    leaked = [(path, label, "gallery" if label == "dog" else split) for path, label, split in rows]
    leaked[0] = (leaked[0][0], leaked[0][1], "query")  # one cat image in query, the others train
    with pytest.raises(DataError, match=r"open_set needs train classes disjoint.* 1 class\(es\) .* \['cat'\]"):
        load_retrieval_data("manifest", _request(_write_csv(tmp_path / "leaked.csv", leaked), protocol="open_set"))
    with pytest.raises(DataError, match="data.train_classes=2 does not apply to user-assigned splits"):
        load_retrieval_data("manifest", _request(manifest, protocol="open_set", train_classes=2))


def test_query_classes_without_gallery_images_are_warned_about_not_refused(tmp_path, caplog):
    rows = _collection(tmp_path)
    rows = [(path, label, "query" if label == "yak" else split) for path, label, split in rows]
    manifest = _write_csv(tmp_path / "data.csv", rows)
    with caplog.at_level(logging.WARNING, logger="workers.datasets.registry"):
        data = load_retrieval_data("manifest", _request(manifest))
    assert "4 of the 8 queries" in caplog.text and "['yak']" in caplog.text
    assert 5 not in data.gallery.labels
    only_unmatched = [(path, label, split) for path, label, split in rows if split == "train" or label == "yak"]
    only_unmatched += [(path, label, "gallery") for path, label, split in rows if label == "owl"]
    with pytest.raises(DataError, match=r"no query class of .* has an image in the gallery split .*\['yak'\]"):
        load_retrieval_data("manifest", _request(_write_csv(tmp_path / "none.csv", only_unmatched)))


def test_single_image_classes_are_used_as_assigned(tmp_path, caplog):
    rows = _collection(tmp_path)
    _image(tmp_path / "solo.png", 250)
    _image(tmp_path / "lone.png", 251)
    rows += [("solo.png", "solo", "gallery"), ("lone.png", "lone", "query")]
    with caplog.at_level(logging.WARNING, logger="workers.datasets.registry"):
        data = load_retrieval_data("manifest", _request(_write_csv(tmp_path / "data.csv", rows)))
    assert "solo" in data.class_names and data.class_names.index("solo") in data.gallery.labels  # a distractor
    assert "['lone']" in caplog.text  # its query has no match: warned, left out of the metrics


@pytest.mark.parametrize("rows, message", [
    ([("a.png", "x", "train"), ("b.png", "x", "validation"), ("c.png", "y", "test"), ("d.png", "y", "test")],
     r"values other than \['train', 'query', 'gallery'\]: 'validation' in row 2; 'test' in rows 3, 4"),
    ([("a.png", "x", "train"), ("b.png", "", "query")], r"1 row\(s\) have an empty label \(row 2"),
    ([("a.png", "x", "train"), ("./a.png", "x", "query"), ("b.png", "y", "gallery")],
     r"1 file\(s\) are listed more than once: 'a.png' in rows 1, 2"),
    ([("a.png", "x", "train"), ("b.png", "x", "train")], r"no rows with split 'query'.* add query rows"),
    ([("a.png", "x", "train"), ("gone/1.png", "x", "query"), ("gone/2.png", "y", "gallery")],
     r"2 of the 3 listed files do not exist \(or are not files\), e.g. 'gone/1.png' \(row 2\); 'gone/2.png' \(row 3\)"),
])
def test_bad_rows_are_refused_before_decoding_with_their_row_numbers(tmp_path, rows, message):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _image(tmp_path / name, 1)
    with pytest.raises(DataError, match=message) as error:
        list_manifest(_write_csv(tmp_path / "data.csv", rows))
    assert f"data.root={str(tmp_path / 'data.csv')!r}" in str(error.value)


def test_a_manifest_without_the_required_columns_or_not_a_table_is_refused(tmp_path):
    manifest = _write_csv(tmp_path / "data.csv", [("a.png", "x")], header=("path", "class"))
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['label', 'split'\] \(it has \['path', 'class'\]\)"):
        list_manifest(manifest)
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DataError, match=r"neither CSV nor Parquet.*\['.csv', '.parquet', '.pq'\]"):
        list_manifest(tmp_path / "data.json")
    with pytest.raises(DataError, match="is not a file"):
        load_retrieval_data("manifest", DataRequest(root=str(tmp_path / "missing.csv")))
    with pytest.raises(DataError, match="data.root is required for data.source 'manifest'"):
        load_retrieval_data("manifest", DataRequest())
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="could not be read as Parquet"):
        list_manifest(tmp_path / "broken.parquet")


def test_a_split_left_without_decodable_images_is_refused_by_name(tmp_path):
    rows = _collection(tmp_path)
    for path, label, split in rows:
        if split == "gallery":
            (tmp_path / path).write_bytes(b"not an image")
    manifest = _write_csv(tmp_path / "data.csv", rows)
    with pytest.raises(DataError, match="the gallery split of manifest .* has no decodable images"):
        load_retrieval_data("manifest", _request(manifest, max_bad_fraction=0.5))


@pytest.mark.parametrize("leave", ["absolute", "dotdot", "symlink"])
def test_files_outside_the_manifests_folder_are_refused_unless_allowed(tmp_path, leave):
    folder, outside = tmp_path / "dataset", tmp_path / "elsewhere" / "secret.png"
    rows = _collection(folder)
    _image(outside, 200)
    (folder / "images" / "link.png").symlink_to(outside)
    written = {"absolute": str(outside), "dotdot": "../elsewhere/secret.png", "symlink": "images/link.png"}[leave]
    rows[5] = (written, rows[5][1], rows[5][2])
    manifest = _write_csv(folder / "data.csv", rows)
    with pytest.raises(DataError, match=rf"1 of the 24 listed files lie outside the manifest's folder .*"
                                        rf"'{written}' \(row 6\); rows counted .*data.allow_paths_outside_root: true"):
        load_retrieval_data("manifest", _request(manifest))
    data = load_retrieval_data("manifest", _request(manifest, allow_paths_outside_root=True))
    assert 200 in np.asarray(data.train.images)[:, 0, 0, 0]


def test_a_symbolic_link_that_stays_inside_the_folder_is_read(tmp_path):
    rows = _collection(tmp_path)
    (tmp_path / "alias.png").symlink_to(tmp_path / rows[0][0])
    rows[0] = ("alias.png", rows[0][1], rows[0][2])
    assert list_manifest(_write_csv(tmp_path / "data.csv", rows)).ids[0] == "alias.png"

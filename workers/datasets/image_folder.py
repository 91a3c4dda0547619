"""User data in folders: one subfolder per class or identity, images in any format Pillow reads.

Two layouts of ``data.root``:

* one pool, ``ROOT/<class>/<image>``: the splits are drawn from it by ``data.protocol`` (see
  ``workers.datasets.splits``);
* split folders, ``ROOT/train/<class>/<image>``, ``ROOT/query/<class>/<image>`` and
  ``ROOT/gallery/<class>/<image>``: the splits as the user made them (``splits.split_as_assigned``:
  ``data.query_size``/``data.gallery_size`` do not apply, ``data.train_size`` caps train). The
  layout is chosen when ROOT holds a folder named ``train``, ``query`` or ``gallery``; then ROOT
  must hold exactly those three folders and nothing else (another folder beside them, or a missing
  one, is refused: a class cannot be called ``train``). A class is the same class in every split
  folder it appears in (same folder name, same label); class order is the sorted union of names.

Images may sit at any depth below a class folder; files directly in ROOT or in a split folder
belong to no class and are not read. Which files are images is ruled by
``workers.datasets.image_files`` (hidden files and folders are skipped). A class folder without
images is skipped, and a warning names it; a split folder without images is refused. Ids are the
paths relative to ROOT (``cat/1.png``, ``train/cat/1.png``). Files are decoded once by
``workers.datasets.decoding``: into the shard cache (``data.streaming`` auto/on) or memory (off);
files that cannot be decoded are skipped up to ``data.max_bad_fraction``.

Colour is a choice, never a silent conversion (``choose_channels``): with ``data.channels`` unset
(``DataRequest.channels`` None), up to ``CHANNEL_SAMPLE`` files spread over the listing are looked
at (headers only, ``image_files.stored_in_colour``); when all are gray the collection loads as 1
channel, and when any is in colour it is refused, saying what ``data.channels`` 1 and 3 do.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from workers.datasets.decoding import DecodeSettings, decode_files
from workers.datasets.errors import DataError
from workers.datasets.image_files import IMAGE_SUFFIXES, image_files_under, stored_in_colour
from workers.datasets.listing import SPLIT_NAMES, LabelledFiles
from workers.datasets.registry import register_source
from workers.datasets.splits import ImagePool, split_as_assigned, split_one_pool
from workers.datasets.types import DataRequest, RetrievalData

logger = logging.getLogger(__name__)

# Files whose headers are read to tell a gray collection from a colour one when data.channels is unset.
CHANNEL_SAMPLE = 256


@register_source("image_folder")
def load_image_folder_source(request: DataRequest) -> RetrievalData:
    """One pool: query and gallery drawn first, then train from what is left (all of it by default);
    split folders: the splits as given (module rules)."""
    if request.root is None:
        raise DataError("data.root is required for data.source 'image_folder': the folder of class subfolders "
                        "(or of the split folders train, query and gallery)")
    return load_labelled_files(f"image_folder:{request.root}", list_image_folder(request.root), request)


def load_labelled_files(name: str, listing: LabelledFiles, request: DataRequest) -> RetrievalData:
    """Decode a file source's listing once and split it: as assigned when the listing has splits, else as one pool."""
    request = choose_channels(listing, request)
    decoded = decode_files(listing, decode_settings(request, streaming_default=True))
    files = decoded.files
    pool = ImagePool(name, listing.description, decoded.images, files.labels, files.class_names, files.ids,
                     decoded.bad)
    if files.splits is None:
        return split_one_pool(pool, request)
    return split_as_assigned(pool, files.splits, request)


def choose_channels(listing: LabelledFiles, request: DataRequest) -> DataRequest:
    """``request`` with its channels chosen: as given, or (None: data.channels unset) 1 for a gray
    collection; a colour one is refused (module rules)."""
    if request.channels is not None:
        return request
    count = min(CHANNEL_SAMPLE, len(listing))
    colour = []
    for position in np.unique(np.linspace(0, len(listing) - 1, num=count).round().astype(int)) if count else []:
        if stored_in_colour(listing.paths[position]):
            colour.append(str(listing.ids[position]))
            if len(colour) == 3:
                break
    if not colour:
        return replace(request, channels=1)
    raise DataError(
        f"{listing.description} holds colour images (e.g. {colour}) and data.channels is not set: choose "
        "data.channels: 3 to train and search on the RGB images (the query models then take 3-channel input; "
        "the usual choice for photos), or data.channels: 1 to convert every image to gray (Pillow's luma) and "
        "search on gray. E.g. --set data.channels=3"
    )


def decode_settings(request: DataRequest, streaming_default: bool) -> DecodeSettings:
    """How a file source decodes: ``data.streaming`` (None: the source's default) and the cache settings."""
    streaming = streaming_default if request.streaming is None else request.streaming
    # Absolute: readers in trials, which Tune runs in their own working directories, rebuild from it.
    cache_dir = str(Path(request.cache_dir).expanduser().resolve()) if request.cache_dir else None
    return DecodeSettings(request.image_size, request.channels, streaming, cache_dir, request.decode_workers,
                          request.max_bad_fraction, request.cache_trusted_group)


def list_image_folder(root: str | Path) -> LabelledFiles:
    """Every image of ``data.root`` in either layout (module rules); ids are paths relative to ROOT."""
    if not Path(root).expanduser().is_dir():
        raise DataError(f"data.root={str(root)!r} is not a folder; give a folder with one subfolder per class")
    root = Path(root).expanduser().resolve()  # listed paths are absolute (see LabelledFiles)
    folders = _visible_subfolders(root)
    if any(folder.name in SPLIT_NAMES for folder in folders):
        return _list_split_folders(root, folders)
    files_by_class, empty = _images_by_class(root, folders)
    _warn_empty_class_folders(empty, root)
    if not files_by_class:
        raise DataError(
            f"data.root={str(root)!r} holds no images in class subfolders "
            f"(expected ROOT/<class>/<image> with suffixes {sorted(IMAGE_SUFFIXES)})"
        )
    class_names = tuple(files_by_class)
    paths = [path for files in files_by_class.values() for path in files]
    labels = [label for label, files in enumerate(files_by_class.values()) for _ in files]
    return _labelled(root, paths, labels, class_names, splits=None)


def _list_split_folders(root: Path, folders: list[Path]) -> LabelledFiles:
    names = {folder.name for folder in folders}
    missing = [split for split in SPLIT_NAMES if split not in names]
    others = sorted(names - set(SPLIT_NAMES))
    if missing or others:
        problem = f"lacks {missing}" if missing else f"also holds {others}"
        raise DataError(
            f"data.root={str(root)!r} holds split folders {sorted(names & set(SPLIT_NAMES))} but {problem}: with "
            f"split folders, ROOT must hold exactly {list(SPLIT_NAMES)}, each with one subfolder per class "
            "(ROOT/train/<class>/<image>, ...); without them, one subfolder per class (ROOT/<class>/<image>). "
            "Add or move folders to match one layout"
        )
    per_split, empty = {}, []
    for split in SPLIT_NAMES:
        files_by_class, split_empty = _images_by_class(root, _visible_subfolders(root / split))
        per_split[split] = files_by_class
        empty.extend(split_empty)
    _warn_empty_class_folders(empty, root)
    for split, files_by_class in per_split.items():
        if not files_by_class:
            raise DataError(f"data.root={str(root)!r}: the {split} split folder holds no images in class subfolders; "
                            f"every split needs images: add ROOT/{split}/<class>/<image> files (suffixes "
                            f"{sorted(IMAGE_SUFFIXES)})")
    class_names = tuple(sorted({name for files_by_class in per_split.values() for name in files_by_class}))
    label_of = {name: label for label, name in enumerate(class_names)}
    paths, labels, splits = [], [], []
    for split, files_by_class in per_split.items():
        for name, files in files_by_class.items():
            paths.extend(files)
            labels.extend([label_of[name]] * len(files))
            splits.extend([split] * len(files))
    return _labelled(root, paths, labels, class_names, splits=splits)


def _visible_subfolders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def _images_by_class(root: Path, class_dirs: list[Path]) -> tuple[dict[str, list[Path]], list[Path]]:
    """{class name: its image files} for the class folders with images, in sorted order; and the empty folders."""
    files_by_class, empty = {}, []
    for class_dir in class_dirs:
        files = image_files_under(class_dir, root)
        if files:
            files_by_class[class_dir.name] = files
        else:
            empty.append(class_dir)
    return files_by_class, empty


def _warn_empty_class_folders(empty: list[Path], root: Path) -> None:
    if empty:
        names = [folder.relative_to(root).as_posix() for folder in empty]
        logger.warning("data.root=%r: %d class folder(s) hold no images and are skipped: %s%s", str(root), len(names),
                       names[:10], " ..." if len(names) > 10 else "")


def _labelled(root: Path, paths: list[Path], labels: list[int], class_names: tuple[str, ...],
              splits: list[str] | None) -> LabelledFiles:
    return LabelledFiles(
        description=f"image folder {root}",
        paths=np.array([str(path) for path in paths]),
        ids=np.array([path.relative_to(root).as_posix() for path in paths]),
        labels=np.array(labels, dtype=np.int64),
        class_names=class_names,
        splits=None if splits is None else np.array(splits),
    )

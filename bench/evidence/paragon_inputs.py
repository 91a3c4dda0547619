"""What every method's run takes from the trained paragon, made once per work folder and cached.

Files in the paragon's folder (``<workdir>/<protocol>/paragon/<backbone>-s<stride>/``):

* ``gallery_search.safetensors``: the paragon's checkpoint with the data and split it was trained
  on written into its record (``dataset``, ``class_names``, ``split`` as ``cmpnas`` records them), so
  ``cmpnas search`` accepts it as ``gallery.checkpoint`` for the protocol's split; the weights and
  the architecture are the same bytes, so the fingerprint is the paragon's (checked);
* ``held_out_gallery-<digest>.npy``: the paragon's embeddings of the held-out pool (the gallery side of
  every leave-one-out evaluation);
* ``selection_embeddings-<digest>.npz``: its embeddings of the selection view (train and validation
  halves) with the BCT classifier, the frozen targets of the fixed architectures' training.

``<digest>`` names what was embedded: the paragon's fingerprint, the class names, and the ids,
labels, shape and pixels of the images, so a protocol whose data differs (another seed, sizes, a
pool) never reads another's embeddings; it computes its own beside them.

Nothing here trains: a missing paragon is refused with the command that trains it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from orchestrator.config import CmpnasConfig
from orchestrator.setup.gallery import split_identity
from orchestrator.tracking.dataset_inputs import split_digest
from workers.datasets.types import ImageSet
from workers.gallery.embeddings import GalleryEmbeddings, compute_gallery_embeddings
from workers.gallery.model import load_gallery, save_gallery
from workers.storage.durable_write import replaced_durably
from workers.training.preprocess import ModelInput, embed_images

from protocol import ProtocolError
from splits import ProtocolData

SEARCH_CHECKPOINT = "gallery_search.safetensors"


def paragon_folder(workdir: Path, protocol_spec: dict) -> Path:
    """The protocol's paragon folder; refused until its ``gallery.safetensors`` exists."""
    section = protocol_spec["paragon"]
    folder = workdir / "paragon" / f"{section['backbone']}-s{int(section['stem_stride'])}"
    if not (folder / "gallery.safetensors").exists():
        raise ProtocolError(f"the paragon is not trained yet ({folder / 'gallery.safetensors'} is missing): every "
                            "method trains against it; run `bench/evidence/run.py paragon` first (it resumes)")
    return folder


def search_checkpoint(folder: Path, config: CmpnasConfig, data: ProtocolData) -> Path:
    """``gallery_search.safetensors`` (module docstring), written once."""
    path = folder / SEARCH_CHECKPOINT
    if path.exists():
        return path
    checkpoint = load_gallery(folder / "gallery.safetensors")
    selection = data.selection
    if checkpoint.info.get("train_images") != len(selection.train):
        raise ProtocolError(f"the paragon in {folder} trained on {checkpoint.info.get('train_images')} images, the "
                            f"protocol's train split has {len(selection.train)}: not this protocol's paragon")
    info = {**checkpoint.info, "dataset": selection.name, "class_names": list(selection.class_names),
            "split": split_identity(config)}
    with replaced_durably(path) as temporary:
        save_gallery(temporary, checkpoint.model, checkpoint.mean, checkpoint.std, info)
    if load_gallery(path).fingerprint != checkpoint.fingerprint:
        path.unlink()
        raise ProtocolError(f"{path}: the copy's fingerprint differs from the paragon's; not used")
    return path


def embeddings_digest(paragon_fingerprint: str, class_names: tuple[str, ...], *image_sets: ImageSet | None) -> str:
    """12 hex digits naming the paragon, the class names (the BCT classifier's rows) and each of
    ``image_sets`` (None counts as absent) by the split identity MLflow and exports record
    (``split_digest``: shape, labels, ids) and its pixels: the key of a cached embedding file."""
    digest = hashlib.sha256(paragon_fingerprint.encode())
    digest.update("\n".join(class_names).encode())
    for image_set in image_sets:
        if image_set is None:
            digest.update(b"absent")
            continue
        digest.update(split_digest(tuple(image_set.images.shape), image_set.labels, image_set.ids).encode())
        digest.update(np.ascontiguousarray(image_set.images).tobytes())
    return digest.hexdigest()[:12]


def held_out_gallery(folder: Path, data: ProtocolData, device: torch.device) -> np.ndarray:
    """The paragon's embeddings of the held-out pool, computed once per pool."""
    checkpoint = load_gallery(folder / "gallery.safetensors", device)
    key = embeddings_digest(checkpoint.fingerprint, data.selection.class_names, data.held_out)
    path = folder / f"held_out_gallery-{key}.npy"
    if path.exists():
        return np.load(path)
    model_input = ModelInput(checkpoint.mean, checkpoint.std, checkpoint.model.arch.image_size, device)
    embeddings = embed_images(checkpoint.model, data.held_out.images, model_input)
    with replaced_durably(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, embeddings)
    return embeddings


def selection_embeddings(folder: Path, data: ProtocolData, device: torch.device) -> GalleryEmbeddings:
    """The paragon's embeddings of the selection view and its BCT classifier, computed once per view."""
    checkpoint = load_gallery(folder / "gallery.safetensors", device)
    selection = data.selection
    key = embeddings_digest(checkpoint.fingerprint, selection.class_names, selection.train, selection.query,
                            selection.gallery, selection.unlabelled, selection.agreement)
    path = folder / f"selection_embeddings-{key}.npz"
    if path.exists():
        with np.load(path) as stored:  # a field stored as None (the unlabelled pool's, without one) is absent
            values = {item.name: stored[item.name] for item in fields(GalleryEmbeddings) if item.name in stored}
        scalars = {"logit_scale": float, "fingerprint": str, "images_embedded": int, "seconds": float,
                   "classifier_kind": str}
        return GalleryEmbeddings(**{name: scalars[name](value) if name in scalars else value
                                    for name, value in values.items()})
    embeddings = compute_gallery_embeddings(checkpoint, selection, device)
    with replaced_durably(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **{name: np.asarray(value) for name, value in asdict(embeddings).items()
                            if value is not None})  # None would be an object array, refused when loaded
    return embeddings

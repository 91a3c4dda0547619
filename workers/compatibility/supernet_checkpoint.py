"""Supernet checkpoints: safetensors with the space, embedding size and gallery they were trained for.

The model metadata (covered by the checkpoint fingerprint) records the search space, ``embed_dim``,
``in_chans`` and the fingerprint of the frozen gallery model the supernet was made compatible
with; a search refuses a checkpoint whose record differs from its own, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search_space import SearchSpace
from search_space.supernet import ElasticSupernet, supernet_identity
from workers.storage.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class SupernetCheckpoint:
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    info: dict[str, Any]
    fingerprint: str


def save_supernet(path: str | Path, supernet: ElasticSupernet, gallery_fingerprint: str,
                  info: dict[str, Any] | None = None) -> str:
    """Write the supernet's weights; returns the checkpoint fingerprint."""
    metadata = {**supernet_identity(supernet.space), "gallery_fingerprint": gallery_fingerprint}
    return save_checkpoint(path, supernet.state_dict(), metadata, info)


def load_supernet(path: str | Path) -> SupernetCheckpoint:
    state, header = load_checkpoint(path)
    metadata = header["model"]
    if metadata.get("kind") != "supernet":
        raise CheckpointError(f"{path} is a cmpnas checkpoint but not of a supernet (kind {metadata.get('kind')!r}); "
                              "point supernet.checkpoint at the output of `cmpnas supernet train`")
    return SupernetCheckpoint(state, metadata, header.get("extra", {}), header["fingerprint"])


def check_supernet_fits(checkpoint: SupernetCheckpoint, space: SearchSpace, gallery_fingerprint: str,
                        path: str | Path) -> None:
    """Refuse weights trained for another space, embedding size, input channels or gallery model."""
    recorded = checkpoint.metadata
    problems = []
    for field, configured, key in (("search_space.name", space.name, "space"),
                                   ("gallery.embed_dim", space.embed_dim, "embed_dim"),
                                   ("data.channels", space.in_chans, "in_chans")):
        if recorded.get(key) != configured:
            problems.append(f"{field} is {configured!r} but the supernet was trained with {recorded.get(key)!r}")
    if recorded.get("gallery_fingerprint") != gallery_fingerprint:
        problems.append(
            f"the gallery model's fingerprint is {gallery_fingerprint[:12]} but the supernet was made compatible "
            f"with gallery {str(recorded.get('gallery_fingerprint'))[:12]} (gallery.checkpoint): its subnets would "
            "not be compatible with this gallery"
        )
    if problems:
        raise CheckpointError(
            f"supernet checkpoint {path} does not fit this search: " + "; ".join(problems)
            + ". Train a matching one with `cmpnas supernet train` (same config), point supernet.checkpoint at one, "
              "or set training.mode=scratch"
        )

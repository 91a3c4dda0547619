"""The supernet of a search in the inherit modes: check early that it exists, then that it fits."""

from __future__ import annotations

from orchestrator.config import CmpnasConfig
from search_space import SearchSpace
from workers.compatibility.supernet_checkpoint import SupernetCheckpoint, check_supernet_fits, load_supernet
from workers.storage.checkpoint import CheckpointError


def uses_supernet(config: CmpnasConfig) -> bool:
    return config.training.mode != "scratch"


def require_supernet_checkpoint(config: CmpnasConfig) -> None:
    """Fail before any work is done when an inherit mode has no supernet file to inherit from."""
    if not uses_supernet(config):
        return
    path = config.supernet_checkpoint_path
    if not path.is_file():
        where = f"supernet.checkpoint={config.supernet.checkpoint!r}" if config.supernet.checkpoint else \
            f"supernet.checkpoint is null, so OUTPUT_DIR/supernet.safetensors ({path})"
        raise CheckpointError(
            f"training.mode={config.training.mode!r} inherits weights from a supernet, but {where} does not exist; "
            "train one with `cmpnas supernet train` (same config), point supernet.checkpoint at one, "
            "or set training.mode=scratch"
        )


def load_supernet_for_search(config: CmpnasConfig, space: SearchSpace, gallery_fingerprint: str
                             ) -> SupernetCheckpoint | None:
    """The supernet checkpoint checked against this search's space and gallery, or None in mode scratch."""
    if not uses_supernet(config):
        return None
    require_supernet_checkpoint(config)
    path = config.supernet_checkpoint_path
    checkpoint = load_supernet(path)
    check_supernet_fits(checkpoint, space, gallery_fingerprint, path)
    return checkpoint

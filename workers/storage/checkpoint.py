"""Checkpoints as safetensors files with JSON metadata: loading never executes code.

The fingerprint is a SHA-256 over the tensor names, dtypes, shapes and bytes plus the model
metadata, so it names the *model*, not the file: two saves of the same weights agree, and any
change to a weight or to the recorded architecture changes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from search_space.errors import CmpnasError
from workers.storage.durable_write import replaced_durably

METADATA_KEY = "cmpnas"


class CheckpointError(CmpnasError, RuntimeError):
    """A file that is not a cmpnas checkpoint, is corrupt, or does not fit where it is used."""


def fingerprint(state: dict[str, torch.Tensor], model_metadata: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(model_metadata, sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # Flattened first: a 0-d tensor cannot be viewed as bytes.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, torch.Tensor], model_metadata: dict[str, Any],
                    extra_metadata: dict[str, Any] | None = None) -> str:
    """Write ``state`` and metadata atomically and durably; return the fingerprint."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    digest = fingerprint(state, model_metadata)
    header = {"model": model_metadata, "extra": extra_metadata or {}, "fingerprint": digest}
    with replaced_durably(path) as temporary:
        save_file(state, str(temporary), metadata={METADATA_KEY: json.dumps(header, sort_keys=True)})
    return digest


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state, header) of a checkpoint written by ``save_checkpoint``, after checking its fingerprint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw_header = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint ({error}). cmpnas never unpickles checkpoints; "
            "re-create it with `cmpnas gallery train`"
        ) from error
    if raw_header is None:
        raise CheckpointError(f"{path} is a safetensors file without cmpnas metadata; re-create it with `cmpnas gallery train`")
    try:
        header = json.loads(raw_header)
        model_metadata, expected = header["model"], header["fingerprint"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} has corrupt cmpnas metadata ({error})") from error
    actual = fingerprint(state, model_metadata)
    if actual != expected:
        raise CheckpointError(
            f"{path} fails its integrity check (fingerprint {actual[:12]}, recorded {expected[:12]}): "
            "the file was modified or corrupted; re-create it"
        )
    return state, header

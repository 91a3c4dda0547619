"""``gallery.source: timm``: a timm architecture (``gallery.backbone``) with the team's weights.

Weights (``gallery.path``) are a safetensors file or a PyTorch state_dict saved with
``torch.save(model.state_dict(), ...)``, read with ``torch.load(weights_only=True)``: tensors
only, never pickled code. A checkpoint dict that holds the state_dict under ``state_dict`` or
``model`` is accepted too. Loading:

- A ``module.`` or ``model.`` prefix on every key (DataParallel, training wrappers) is removed.
- The input channels and the classifier's class count are read from the weights (the first
  convolution's and the classifier's shapes), so a 1-channel model or a 512-class head loads as saved.
- Then loading is strict; its error lists the missing and unexpected keys.

The embedding is the pooled features (``forward_head(..., pre_logits=True)``: 512 for resnet18,
1280 for mobilenetv3), or with ``gallery.head`` the output of that named module (for example
``fc`` where the classifier was replaced by an embedding layer). Input defaults (size, mean,
std) come from timm's data config of the model, as ``timm.data.resolve_model_data_config`` gives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from workers.gallery.sources.base import GallerySourceError, GallerySourceRequest, files_fingerprint
from workers.gallery.sources.registry import register_gallery_source
from workers.gallery.sources.torch_model import NormalizedEmbedding, TorchGalleryModel

WRAPPER_PREFIXES = ("module.", "model.")
MAX_KEYS_SHOWN = 8


class TimmGalleryModel(TorchGalleryModel):
    source = "timm"


class PooledFeatures(nn.Module):
    """A timm model's pooled features, before its classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


class NamedModuleOutput(nn.Module):
    """The output of the submodule ``name`` of a timm model, captured during its forward pass."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.name = name
        self._captured: list[torch.Tensor] = []
        dict(model.named_modules())[name].register_forward_hook(lambda _m, _i, output: self._captured.append(output))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        self.model(images)
        return self._captured[-1]


@register_gallery_source("timm")
def load_timm_gallery(request: GallerySourceRequest) -> TimmGalleryModel:
    import timm
    import timm.data

    if not request.backbone or not timm.is_model(request.backbone):
        raise GallerySourceError(f"gallery.source='timm' needs gallery.backbone, a timm model name "
                                 f"(got {request.backbone!r}; see timm.list_models())")
    state = strip_wrapper_prefixes(read_state_dict(request.path))
    probe = timm.create_model(request.backbone, pretrained=False)
    in_chans = request.input.channels or _input_channels(state, probe)
    num_classes = _classifier_classes(state, probe)
    model = timm.create_model(request.backbone, pretrained=False, in_chans=in_chans, num_classes=num_classes)
    load_strict(model, state, request)
    data_config = timm.data.resolve_model_data_config(model)
    spec = request.input.resolve(
        size=data_config["input_size"][-1], channels=in_chans,
        mean=data_config["mean"] if len(data_config["mean"]) == in_chans else None,
        std=data_config["std"] if len(data_config["std"]) == in_chans else None, source="timm")
    if request.head:
        names = dict(model.named_modules())
        if request.head not in names:
            shown = [name for name in names if name and "." not in name]
            raise GallerySourceError(f"gallery.head={request.head!r} is not a module of {request.backbone}; its "
                                     f"top-level modules are {shown}")
        network: nn.Module = NamedModuleOutput(model, request.head)
    else:
        network = PooledFeatures(model)
    description = f"timm:{request.backbone}" + (f"[{request.head}]" if request.head else "")
    fingerprint = files_fingerprint([request.path], {"source": "timm", "backbone": request.backbone,
                                                     "head": request.head, "input": spec.to_dict()})
    return TimmGalleryModel(NormalizedEmbedding(network), fingerprint, spec, description)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a weights-only PyTorch file; never executes pickled code."""
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises several types on corrupt files
            raise GallerySourceError(f"gallery.path={str(path)!r} is not a readable safetensors file ({error})") from error
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
            raise GallerySourceError(
                f"gallery.path={str(path)!r} is neither a safetensors file nor a state_dict saved with "
                f"torch.save(model.state_dict(), path) ({type(error).__name__}: {str(error)[:300]}). A file that "
                "pickles a whole model object is refused, since loading it would run its code: save "
                "model.state_dict() instead"
            ) from error
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GallerySourceError(f"gallery.path={str(path)!r} holds no state_dict of tensors; save the model with "
                                 "torch.save(model.state_dict(), path) or safetensors.torch.save_file")
    return state


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a ``module.`` / ``model.`` prefix that every key carries (possibly both, nested)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                changed = True
    return state


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], request: GallerySourceRequest) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
                  for key in sorted(set(state) & set(expected)) if state[key].shape != expected[key].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches (file vs model)", mismatched)):
            if keys:
                more = f" and {len(keys) - MAX_KEYS_SHOWN} more" if len(keys) > MAX_KEYS_SHOWN else ""
                parts.append(f"{len(keys)} {label}: {keys[:MAX_KEYS_SHOWN]}{more}")
        raise GallerySourceError(
            f"gallery.path={str(request.path)!r} does not hold weights of timm {request.backbone!r}: "
            + "; ".join(parts) + ". Check gallery.backbone (and gallery.input.channels), or save the model's own "
            "state_dict"
        )
    model.load_state_dict(state, strict=True)


def _is_safetensors(path: Path) -> bool:
    # 8-byte little-endian header length, then the JSON header: '{'.
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _input_channels(state: dict[str, torch.Tensor], probe: nn.Module) -> int:
    first_conv = probe.pretrained_cfg.get("first_conv")
    weight = state.get(f"{first_conv}.weight") if isinstance(first_conv, str) else None
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else 3


def _classifier_classes(state: dict[str, torch.Tensor], probe: nn.Module) -> int:
    classifier = probe.pretrained_cfg.get("classifier")
    weight = state.get(f"{classifier}.weight") if isinstance(classifier, str) else None
    return int(weight.shape[0]) if weight is not None else 0

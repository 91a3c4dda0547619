"""The gallery (paragon) model: a timm backbone, an L2-normalised embedding head, a classifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from workers.storage.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class GalleryArchitecture:
    backbone: str
    embed_dim: int
    num_classes: int
    in_chans: int
    image_size: int
    stem_stride: int = 2
    logit_scale: float = 16.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GalleryArchitecture:
        return cls(**data)


class GalleryEmbeddingNet(nn.Module):
    """``forward`` gives L2-normalised embeddings; ``classify`` the logits of a (possibly other) embedding.

    The classifier acts on ``logit_scale * embedding`` so that it can be applied, frozen, to a
    query model's normalised embeddings (the BCT influence loss).
    """

    def __init__(self, arch: GalleryArchitecture):
        super().__init__()
        self.arch = arch
        self.backbone = timm.create_model(arch.backbone, pretrained=False, in_chans=arch.in_chans, num_classes=0)
        _adapt_stem(self.backbone, arch.stem_stride)
        # Models with a pre-logits head (MobileNetV3: conv_head) output head_hidden_size features.
        features = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.embedding = nn.Linear(features, arch.embed_dim)
        self.classifier = nn.Linear(arch.embed_dim, arch.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedding(self.backbone(images)), dim=1)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.arch.logit_scale * embeddings)


def _adapt_stem(backbone: nn.Module, stride: int) -> None:
    """Small images (28-64 px) lose too much to an ImageNet stem's 4x downsampling.

    The first convolution gets ``stride`` (1 or 2) and a stem max-pool, where there is one, is
    dropped: stride 2 turns 28x28 into 14x14 feature maps instead of 7x7.
    """
    first_conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        first_conv.stride = (stride, stride)
    if isinstance(getattr(backbone, "maxpool", None), nn.MaxPool2d):
        backbone.maxpool = nn.Identity()


@dataclass(frozen=True)
class GalleryCheckpoint:
    """A loaded gallery model with everything the search needs to use it consistently."""

    model: GalleryEmbeddingNet
    fingerprint: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any]


def save_gallery(path: str | Path, model: GalleryEmbeddingNet, mean, std, info: dict[str, Any]) -> str:
    metadata = {"architecture": asdict(model.arch), "mean": list(mean), "std": list(std)}
    return save_checkpoint(path, model.state_dict(), metadata, extra_metadata=info)


def load_gallery(path: str | Path, device: torch.device | str = "cpu") -> GalleryCheckpoint:
    state, header = load_checkpoint(path)
    try:
        arch = GalleryArchitecture.from_dict(header["model"]["architecture"])
        mean, std = tuple(header["model"]["mean"]), tuple(header["model"]["std"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is a cmpnas checkpoint but not of a gallery model ({error})") from error
    model = GalleryEmbeddingNet(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture ({error})") from error
    model.to(device).eval().requires_grad_(False)
    return GalleryCheckpoint(model=model, fingerprint=header["fingerprint"], mean=mean, std=std, info=header["extra"])

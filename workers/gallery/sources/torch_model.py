"""Gallery models that are PyTorch modules (cmpnas checkpoints, timm weights, TorchScript)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluators.complexity import ComplexityReport, count_complexity
from workers.gallery.sources.base import GalleryInputSpec, GalleryModel, GallerySourceError, check_finite


class NormalizedEmbedding(nn.Module):
    """``network``'s output, flattened and L2-normalised: the embedding every source returns."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.network(images).flatten(1).float(), dim=1)


class TorchGalleryModel(GalleryModel):
    """A frozen ``nn.Module`` from normalised input to L2-normalised embeddings."""

    def __init__(self, module: nn.Module, fingerprint: str, input_spec: GalleryInputSpec, description: str,
                 embed_dim: int | None = None):
        self.module = module.eval().requires_grad_(False)
        if embed_dim is None:
            embed_dim = probe_embed_dim(self.module, input_spec, description)
        super().__init__(fingerprint, input_spec, embed_dim, description)

    @torch.inference_mode()
    def embed(self, images: np.ndarray, ids: Sequence[str], device: torch.device, batch_size: int = 256
              ) -> np.ndarray:
        self.module.to(device)
        chunks = []
        for start in range(0, len(images), batch_size):
            inputs = self.input_spec.model_input(images[start : start + batch_size], device)
            chunks.append(self.module(inputs).float().cpu())
        self.images_embedded += len(images)
        embeddings = torch.cat(chunks).numpy() if chunks else np.zeros((0, self.embed_dim), np.float32)
        return check_finite(embeddings, f"gallery model {self.description}",
                            "check the weights and gallery.input (mean, std, size)")

    def measure_cost(self) -> ComplexityReport | None:
        spec = self.input_spec
        return count_complexity(self.module.to("cpu"), (spec.channels, spec.size, spec.size))

    def torch_module(self) -> nn.Module:
        return self.module

    def release(self) -> None:
        self.module.to("cpu")


@torch.inference_mode()
def probe_embed_dim(module: nn.Module, spec: GalleryInputSpec, description: str) -> int:
    """Run two blank images through ``module``: the embedding size, and a clear error if the input does not fit."""
    try:
        output = module(torch.zeros(2, spec.channels, spec.size, spec.size))
    except Exception as error:  # noqa: BLE001 - a foreign model may raise anything on a wrong shape
        raise GallerySourceError(
            f"gallery model {description} fails on {spec.channels}x{spec.size}x{spec.size} input ({error}); set "
            "gallery.input.size and gallery.input.channels to what the model takes"
        ) from error
    if not isinstance(output, torch.Tensor) or output.ndim < 2 or output.shape[0] != 2:
        raise GallerySourceError(f"gallery model {description} must map a batch of images to a batch of embeddings "
                                 f"(N x D), it returned {type(output).__name__} "
                                 f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}")
    return int(output[0].numel())

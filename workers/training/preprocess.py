"""The one place uint8 images become model inputs, so training, evaluation and export agree."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def to_model_input(
    images: np.ndarray | torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    resolution: int,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32 at ``resolution`` x ``resolution`` on ``device``."""
    batch = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    batch = batch.to(device, non_blocking=True).float().div_(255.0)
    mean_t = torch.tensor(mean, device=batch.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=batch.device).view(1, -1, 1, 1)
    batch = normalize_and_resize(batch, mean_t, std_t, resolution)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def normalize_and_resize(images01: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, resolution: int) -> torch.Tensor:
    """[0, 1]-scaled images -> normalised, resized model input. Exported models embed this step."""
    batch = (images01 - mean) / std
    if batch.shape[-1] != resolution or batch.shape[-2] != resolution:
        batch = F.interpolate(batch, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return batch


@dataclass(frozen=True)
class ModelInput:
    """How one model takes uint8 images: the data's ``mean`` and ``std`` (on the [0, 1] scale), the
    model's ``resolution``, the ``device`` it runs on, and its memory format."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int
    device: torch.device | str = "cpu"
    channels_last: bool = False

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return to_model_input(images, self.mean, self.std, self.resolution, self.device, self.channels_last)


@torch.inference_mode()
def embed_images(model: torch.nn.Module, images: np.ndarray, model_input: ModelInput,
                 batch_size: int = 512) -> np.ndarray:
    """Embeddings (float32, N x D) of uint8 images by ``model`` in eval mode; the mode is restored."""
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(images), batch_size):
            chunks.append(model(model_input(images[start : start + batch_size])).float().cpu())
        return torch.cat(chunks).numpy()
    finally:
        model.train(was_training)


def pick_device(prefer_gpu: bool = True) -> torch.device:
    """The trial's GPU when Ray (or the user) made one visible, else the CPU."""
    return torch.device("cuda") if prefer_gpu and torch.cuda.is_available() else torch.device("cpu")

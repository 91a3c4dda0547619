"""Batch-norm recalibration: fresh running statistics for a subnet taken out of a supernet.

Shared supernet weights were trained with batch statistics of many different subnets, so no stored
running mean/variance fits a given subnet. Once-for-All resets them and re-estimates them on a
few thousand training images, in train mode and without gradients; that is what this does.
"""

from __future__ import annotations

import torch
from torch import nn


def calibration_indices(available: int, num_images: int, seed: int = 0) -> torch.Tensor:
    """The images (indices into ``available``) the recalibration uses: a seeded random subset."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(available, generator=generator)[: max(0, min(num_images, available))]


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, inputs: torch.Tensor, num_images: int = 2000,
                           batch_size: int = 256, seed: int = 0) -> int:
    """Reset every batch norm of ``model`` and estimate its statistics on ``num_images`` of ``inputs``.

    ``inputs`` are preprocessed model inputs (as for training). The estimate is the exact average
    over the batches (momentum ``None``), not an exponential one. Returns the images used; the
    model's mode and the layers' momentum are restored.
    """
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not norms or num_images < 1:
        return 0
    chosen = calibration_indices(len(inputs), num_images, seed).to(inputs.device)
    was_training = model.training
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    try:
        for start in range(0, len(chosen), batch_size):
            model(inputs[chosen[start : start + batch_size]])
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)
    return len(chosen)

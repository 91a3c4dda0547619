"""The paragon's cost, what every cost reduction divides by: measured, or gallery.mflops; never zero."""

from __future__ import annotations

import pytest
import torch

from orchestrator.config import ConfigError, validate_config
from orchestrator.setup.gallery import paragon_cost
from workers.gallery.sources import GalleryInputSpec, GallerySourceError
from workers.gallery.sources.torch_model import TorchGalleryModel

SPEC = GalleryInputSpec(size=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)


def _uncountable_gallery() -> TorchGalleryModel:
    """A model fvcore counts as 0 FLOPs: nothing but operators it has no handle for."""
    return TorchGalleryModel(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Flatten()), "f" * 64, SPEC, "relu-net")


def test_a_cost_counted_as_zero_is_refused_with_gallery_mflops():
    gallery = _uncountable_gallery()
    assert gallery.measure_cost().flops == 0
    with pytest.raises(GallerySourceError, match="relu-net was counted as 0 FLOPs.*set gallery.mflops"):
        paragon_cost(validate_config({}), gallery)
    configured = paragon_cost(validate_config({"gallery": {"mflops": 12.5}}), gallery)
    assert configured.flops == 12_500_000 and configured.convention == "as configured in gallery.mflops"


def test_a_configured_cost_that_rounds_to_zero_flops_is_refused():
    with pytest.raises(ConfigError, match="gallery.mflops=1e-09 is below one flop per image"):
        paragon_cost(validate_config({"gallery": {"mflops": 1e-9}}), _uncountable_gallery())

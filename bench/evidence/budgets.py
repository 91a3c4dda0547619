"""The protocol's budgets and the fixed architecture of each, decided before any query model trains.

* budgets: the paragon's MFLOPs (fvcore, counted on its architecture: weights do not change it)
  divided by each of ``budgets.paragon_divisors``, and the search space's floor times
  ``budgets.space_floor_factor``; a budget outside the space's range is not a budget (dropped,
  and said so);
* the fixed architecture of a budget (``methods.fixed_bct``, also ``independent``): of the grid of
  backbones x stem strides x input resolutions, the configuration with the most MFLOPs within the
  budget, ties broken by the higher resolution; none fitting: the method has no row at that budget.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

from evaluators import count_complexity
from search_space import create_space, estimate_mflops
from workers.gallery.model import GalleryArchitecture, GalleryEmbeddingNet


@dataclass(frozen=True)
class Budget:
    name: str  # "paragon/80" or "floor x1.1"
    mflops: float
    cost_reduction: float  # paragon MFLOPs / budget


@dataclass(frozen=True)
class FixedArchitecture:
    backbone: str
    stem_stride: int
    resolution: int
    mflops: float


def architecture_mflops(backbone: str, stem_stride: int, resolution: int, embed_dim: int, num_classes: int = 10,
                        in_chans: int = 1) -> float:
    arch = GalleryArchitecture(backbone=backbone, embed_dim=embed_dim, num_classes=num_classes, in_chans=in_chans,
                               image_size=resolution, stem_stride=stem_stride)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return count_complexity(GalleryEmbeddingNet(arch), (in_chans, resolution, resolution)).flops / 1e6


def protocol_budgets(spec: dict, log=print) -> list[Budget]:
    paragon, budgets = spec["paragon"], spec["budgets"]
    paragon_mflops = architecture_mflops(paragon["backbone"], int(paragon["stem_stride"]), 28, int(paragon["embed_dim"]))
    space = create_space(budgets["search_space"], embed_dim=int(paragon["embed_dim"]), in_chans=1)
    floor = estimate_mflops(space, space.smallest())
    ceiling = estimate_mflops(space, space.largest())
    candidates = [Budget(f"paragon/{divisor}", paragon_mflops / divisor, float(divisor))
                  for divisor in budgets["paragon_divisors"]]
    factor = float(budgets["space_floor_factor"])
    candidates.append(Budget(f"floor x{factor:g}", floor * factor, paragon_mflops / (floor * factor)))
    kept = []
    for budget in candidates:
        if floor <= budget.mflops <= ceiling:
            kept.append(budget)
        else:
            log(f"budget {budget.name} ({budget.mflops:.3f} MFLOPs) is outside the space's range "
                f"[{floor:.3f}, {ceiling:.3f}]: not a budget, not run")
    return kept


def fixed_architecture(budget_mflops: float, grid: dict, embed_dim: int) -> FixedArchitecture | None:
    fitting = []
    for backbone, stride, resolution in itertools.product(grid["backbones"], grid["stem_strides"], grid["resolutions"]):
        mflops = architecture_mflops(backbone, int(stride), int(resolution), embed_dim)
        if mflops <= budget_mflops:
            fitting.append(FixedArchitecture(backbone, int(stride), int(resolution), mflops))
    return max(fitting, key=lambda arch: (arch.mflops, arch.resolution), default=None)

"""Search spaces: which architectures are allowed, and how to sample, mutate and recombine them.

A space is a list of *genes* (the input resolution, then depth, kernel, expansion and width of
every stage), each with a finite tuple of choices. Sampling, mutation and crossover all work on
gene vectors, so every strategy sees the same interface whatever the space looks like.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from search_space.errors import CmpnasError
from search_space.spec import ArchSpec, StageSpec

STAGE_GENES = ("depth", "kernel", "expand", "width")


class OutOfSpaceError(CmpnasError, ValueError):
    """An architecture spec that the search space does not contain."""


@dataclass(frozen=True)
class StageChoices:
    """Searchable choices of one stage, plus the fixed parts of its design (stride, SE, activation)."""

    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    widths: tuple[int, ...]
    stride: int
    use_se: bool
    activation: str

    def choices(self, gene: str) -> tuple[int, ...]:
        return {"depth": self.depths, "kernel": self.kernels, "expand": self.expands, "width": self.widths}[gene]


@dataclass(frozen=True)
class SearchSpace:
    """The genes' choices plus the fixed design around them: a 3x3 stem convolution of
    ``stem_width`` channels and stride ``stem_stride`` (1 for small images, 2 for ImageNet-sized
    ones), the stages, and a pooled head of ``head_width`` features before the embedding."""

    name: str
    in_chans: int
    embed_dim: int
    stem_width: int
    # Keyword-only with a default, so spaces written before it existed keep their stride-1 stem.
    stem_stride: int = field(default=1, kw_only=True)
    head_width: int
    resolutions: tuple[int, ...]
    stages: tuple[StageChoices, ...]
    # The data.image_size range (low, high), in pixels, the space is meant for; a search refuses data
    # outside it (``fits_image_size``). None: not declared, any size (spaces written before it existed).
    image_sizes: tuple[int, int] | None = field(default=None, kw_only=True)

    def __post_init__(self):
        if self.image_sizes is not None and not 0 < self.image_sizes[0] <= self.image_sizes[1]:
            raise ValueError(f"image_sizes of space {self.name!r} must be (low, high) with 0 < low <= high, "
                             f"got {self.image_sizes}")

    def fits_image_size(self, size: int) -> bool:
        """Whether images of ``size`` px suit the space: within ``image_sizes`` (always, when undeclared)."""
        return self.image_sizes is None or self.image_sizes[0] <= size <= self.image_sizes[1]

    # -- genes ---------------------------------------------------------------------------------
    def genes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(field name, allowed values) for every searchable decision, in a fixed order."""
        genes: list[tuple[str, tuple[int, ...]]] = [("resolution", self.resolutions)]
        for index, stage in enumerate(self.stages):
            genes.extend((f"stages[{index}].{gene}", stage.choices(gene)) for gene in STAGE_GENES)
        return genes

    def to_genes(self, spec: ArchSpec) -> list[int]:
        values = [spec.resolution]
        for stage in spec.stages:
            values.extend(getattr(stage, gene) for gene in STAGE_GENES)
        return values

    def from_genes(self, values: list[int]) -> ArchSpec:
        stages = []
        for index in range(len(self.stages)):
            chunk = values[1 + 4 * index : 5 + 4 * index]
            stages.append(StageSpec(**dict(zip(STAGE_GENES, chunk))))
        return ArchSpec(
            space=self.name,
            in_chans=self.in_chans,
            resolution=values[0],
            stages=tuple(stages),
            embed_dim=self.embed_dim,
        )

    # -- validation ----------------------------------------------------------------------------
    def validate(self, spec: ArchSpec) -> ArchSpec:
        """Return ``spec`` if the space contains it, else raise OutOfSpaceError naming the field."""
        fixed = {"space": self.name, "in_chans": self.in_chans, "embed_dim": self.embed_dim}
        for name, expected in fixed.items():
            actual = getattr(spec, name)
            if actual != expected:
                raise OutOfSpaceError(
                    f"{name}={actual!r} does not match the search space '{self.name}' "
                    f"(expected {expected!r}); {name} is fixed by the space, the data and the gallery model"
                )
        if len(spec.stages) != len(self.stages):
            raise OutOfSpaceError(
                f"stages has {len(spec.stages)} entries, the search space '{self.name}' has "
                f"exactly {len(self.stages)} stages"
            )
        for (gene, choices), value in zip(self.genes(), self.to_genes(spec)):
            if value not in choices:
                raise OutOfSpaceError(
                    f"{gene}={value} is outside the search space '{self.name}': "
                    f"allowed values are {list(choices)}"
                )
        return spec

    def contains(self, spec: ArchSpec) -> bool:
        try:
            self.validate(spec)
        except OutOfSpaceError:
            return False
        return True

    # -- sampling and variation ----------------------------------------------------------------
    def sample(self, rng: random.Random) -> ArchSpec:
        """Uniform over the space: every gene drawn independently and uniformly."""
        return self.from_genes([rng.choice(choices) for _, choices in self.genes()])

    def mutate(self, spec: ArchSpec, rng: random.Random, gene_probability: float = 0.1) -> ArchSpec:
        """Resample each gene with ``gene_probability``; at least one gene always changes."""
        genes = self.genes()
        values = self.to_genes(self.validate(spec))
        mutable = [i for i, (_, choices) in enumerate(genes) if len(choices) > 1]
        if not mutable:
            return spec
        changed = [i for i in mutable if rng.random() < gene_probability] or [rng.choice(mutable)]
        for i in changed:
            values[i] = rng.choice([c for c in genes[i][1] if c != values[i]])
        return self.from_genes(values)

    def crossover(self, first: ArchSpec, second: ArchSpec, rng: random.Random) -> ArchSpec:
        """Uniform crossover: each gene from either parent with equal probability."""
        a, b = self.to_genes(self.validate(first)), self.to_genes(self.validate(second))
        return self.from_genes([x if rng.random() < 0.5 else y for x, y in zip(a, b)])

    def largest(self) -> ArchSpec:
        return self.from_genes([max(choices) for _, choices in self.genes()])

    def smallest(self) -> ArchSpec:
        return self.from_genes([min(choices) for _, choices in self.genes()])

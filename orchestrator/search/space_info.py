"""``cmpnas space info``: the FLOPs range a search space offers, stated before any search.

For the configured space (``search_space.name``, sized by ``gallery.embed_dim`` and
``data.channels``) it reports the smallest and the largest architecture with their MFLOPs (the
analytic count, equal to fvcore's, ``search_space.flops``), the paragon's cost reduction at each
end, how many architectures budgets at the cheap end admit, and whether the configured budgets
(``search.max_mflops``, ``search.budgets_mflops``) pass the checks a search applies before it
records anything (``orchestrator.strategies.feasibility``).

The paragon's MFLOPs and the embedding size (which sizes the query models' heads) come from the
configured gallery model where it exists (``gallery.source``, ``gallery.path``: measured as a
search measures it, or ``gallery.mflops``), else from ``paragon_mflops_estimate``: the model
cmpnas would train for ``gallery.backbone``, built untrained, counted by fvcore at ``data.image_size``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from evaluators import count_complexity
from orchestrator.config import CmpnasConfig
from orchestrator.setup.data import requested_channels
from orchestrator.setup.gallery import gallery_request, paragon_cost
from orchestrator.strategies.feasibility import check_search_budgets
from search_space import ArchSpec, BudgetInfeasibleError, SearchSpace, create_space
from search_space.budget import ceiling_mflops, count_within, feasible_counts, floor_mflops

# Budgets at the cheap end, as multiples of the smallest architecture: where a budget sweep goes.
LADDER = (1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 4.0)
EXACT_COUNT_LIMIT = 100_000  # up to this many, architectures are counted one by one; above, the grid count


def paragon_mflops_estimate(config: CmpnasConfig) -> float:
    """MFLOPs of the configured gallery model for one image: the architecture cmpnas trains for
    ``gallery.backbone`` (stem adapted to small images, embedding head), untrained, counted by
    fvcore. A search measures the gallery model it actually loads; this is the same figure for a
    gallery cmpnas trains, without data or a checkpoint."""
    from workers.gallery.model import GalleryArchitecture, GalleryEmbeddingNet

    gallery, data = config.gallery, config.data
    arch = GalleryArchitecture(backbone=gallery.backbone, embed_dim=gallery.embed_dim, num_classes=1,
                               in_chans=data.channels, image_size=data.image_size, stem_stride=gallery.stem_stride)
    with warnings.catch_warnings():  # fvcore's tracing calls the deprecated torch.jit.script: not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        return count_complexity(GalleryEmbeddingNet(arch), (data.channels, data.image_size, data.image_size)).mflops


@dataclass(frozen=True)
class BudgetRow:
    mflops: float
    architectures: int
    exact: bool  # False: counted on the grid, which includes a rim of < 0.2 % of the budget above it


@dataclass(frozen=True)
class SpaceInfo:
    space: SearchSpace
    smallest: ArchSpec
    largest: ArchSpec
    smallest_mflops: float
    largest_mflops: float
    paragon_mflops: float
    ladder: list[BudgetRow]
    configured: list[BudgetRow]
    budget_problem: str | None  # the refusal a search would meet with these budgets, if any

    @property
    def architectures(self) -> int:
        return feasible_counts(self.space, self.largest_mflops).total


def configured_gallery(config: CmpnasConfig) -> tuple[int, float]:
    """(embedding size, MFLOPs per image) of the configured gallery model: the model itself where it
    exists, else the one cmpnas would train (``paragon_mflops_estimate``)."""
    from workers.gallery.sources import load_gallery_model

    if config.gallery.source == "cmpnas" and not config.gallery_path.is_file():
        return config.gallery.embed_dim, paragon_mflops_estimate(config)
    gallery = load_gallery_model(config.gallery.source,
                                 gallery_request(config, config.data.channels, config.data.image_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return gallery.embed_dim, paragon_cost(config, gallery).mflops


def check_budgets_before_set_up(config: CmpnasConfig) -> None:
    """Refuse budgets the configuration alone decides, before any data is read or gallery model
    trained: where the query models' heads and input are known without a model (a gallery model
    cmpnas trains, of ``gallery.embed_dim``; ``data.channels`` chosen, or a built-in set), the
    space is built from them and ``check_search_budgets`` applied. Otherwise the search checks
    once the gallery model is loaded (a model given in a file needs no training)."""
    channels = requested_channels(config)
    if config.gallery.source != "cmpnas" or channels is None:
        return
    space = create_space(config.search_space.name, embed_dim=config.gallery.embed_dim, in_chans=channels)
    check_search_budgets(space, config.search)


def describe_space(config: CmpnasConfig) -> SpaceInfo:
    embed_dim, paragon_mflops = configured_gallery(config)
    space = create_space(config.search_space.name, embed_dim=embed_dim, in_chans=config.data.channels)
    floor, ceiling = floor_mflops(space), ceiling_mflops(space)
    search = config.search
    configured = sorted({*(search.budgets_mflops or ()), *([search.max_mflops] if search.max_mflops else [])})
    try:
        check_search_budgets(space, search)
        problem = None
    except BudgetInfeasibleError as error:
        problem = str(error)
    return SpaceInfo(space, space.smallest(), space.largest(), floor, ceiling, paragon_mflops,
                     [budget_row(space, floor * factor) for factor in LADDER if floor * factor < ceiling],
                     [budget_row(space, budget) for budget in configured], problem)


def budget_row(space: SearchSpace, max_mflops: float) -> BudgetRow:
    if max_mflops < floor_mflops(space):
        return BudgetRow(max_mflops, 0, True)
    counted = feasible_counts(space, max_mflops).total
    if counted <= EXACT_COUNT_LIMIT:
        return BudgetRow(max_mflops, count_within(space, max_mflops, counted), True)
    return BudgetRow(max_mflops, counted, False)


def render_space_info(info: SpaceInfo, console: Console) -> None:
    space = info.space
    console.print(f"search space [bold]{space.name}[/]: {info.architectures:,} architectures "
                  f"({space.in_chans} input channel(s), embedding {space.embed_dim}, resolutions "
                  f"{list(space.resolutions)}); paragon {info.paragon_mflops:.2f} MFLOPs")
    ends = Table(title="Feasible range (MFLOPs: fvcore's count, one multiply-add = one flop)")
    for column in ("", "architecture", "MFLOPs", "paragon / candidate"):
        ends.add_column(column, justify="right" if column in ("MFLOPs", "paragon / candidate") else "left")
    for label, spec, mflops in (("smallest", info.smallest, info.smallest_mflops),
                                ("largest", info.largest, info.largest_mflops)):
        ends.add_row(label, spec.short_name(), f"{mflops:.4f}", f"{info.paragon_mflops / mflops:.1f}x")
    console.print(ends)
    budgets = Table(title="What a budget admits (search.max_mflops, search.budgets_mflops)")
    for column in ("budget MFLOPs", "x smallest", "paragon / budget", "architectures within"):
        budgets.add_column(column, justify="right")
    rows = sorted([*((row, "") for row in info.ladder), *((row, "configured") for row in info.configured)],
                  key=lambda pair: pair[0].mflops)
    for row, source in rows:
        count = f"{row.architectures:,}" if row.exact else f"~{row.architectures:,}"
        budgets.add_row(f"{row.mflops:.4f}" + (f" ({source})" if source else ""),
                        f"{row.mflops / info.smallest_mflops:.2f}", f"{info.paragon_mflops / row.mflops:.1f}x", count)
    console.print(budgets)
    if info.budget_problem:
        console.print(f"[bold red]a search with this configuration would be refused:[/] {info.budget_problem}",
                      highlight=False)
    elif info.configured:
        console.print("the configured budgets admit search.num_candidates architectures: a search can run them")

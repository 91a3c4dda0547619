"""The paper's table at small scale: paragon, fixed compact models with and without compatibility
losses, and CMP-NAS Pareto points, for one domain, every row measured in one invocation.

Rows are *recipes*: named functions registered in ``RECIPES`` that turn the shared context (data,
frozen gallery, its embeddings, the evaluation task, the search's records) into table rows. A new
method (e.g. a weight-sharing supernet) is one more ``@recipe("name")`` function.

- ``paragon``: the gallery model on both sides (gallery/gallery).
- ``fixed_alone``: a fixed compact timm architecture trained alone with its own classifier only;
  cross-model = its queries against the gallery model's gallery (no compatibility: near chance).
- ``fixed_bct``: the same architecture and schedule with the search's compatibility losses (BCT
  influence through the frozen gallery classifier, and the cosine alignment term):
  compatibility through parameters only.
- ``losses``: the loss ablation on the same fixed architecture and schedule: each compatibility
  loss alone (``LOSS_ABLATION``: no own classifier, so a loss that cannot place query embeddings
  in the gallery's space by itself shows it), then the default combination with each added loss.
- ``cmpnas``: the search's Pareto points, the best under each FLOPs budget, as recorded by the
  search (selected on the evaluation split, so optimistic) and retrained from scratch with fresh
  seeds (``--retrain-seeds``).

    python bench/paper_table.py --domain fashion --workdir /tmp/paper-fashion [--from-run RUN_ID]
    python bench/paper_table.py --domain faces --workdir /tmp/paper-faces --plot docs/paper_faces.png
    python bench/paper_table.py --domain fashion --workdir /tmp/paper-fashion --recipes paragon,losses

Every run also writes its rows to ``bench/results/paper_table_<domain>.json`` (``--results``): a
list of objects with ``name``, ``mflops``, ``cost_reduction``, ``cross_<metric>`` and
``gap_<metric>`` (paragon minus row, in points) for the domain's metrics, and ``seeds``.

Without ``--from-run`` the search of the domain's config runs first, in this process.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import psutil
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluators import FLOPS_CONVENTION, count_complexity, create_task  # noqa: E402
from orchestrator.config import CmpnasConfig, load_config  # noqa: E402
from orchestrator.gallery_setup import paragon_cost  # noqa: E402
from search_space import ArchSpec, build_query_model  # noqa: E402
from workers.candidate_training import CandidateTrainingSettings, fine_tune_candidate  # noqa: E402
from workers.fit import OptimSettings  # noqa: E402
from workers.gallery import GalleryArchitecture, GalleryEmbeddingNet  # noqa: E402
from workers.preprocess import embed_images, pick_device  # noqa: E402


@dataclass(frozen=True)
class Domain:
    config: str
    headline: str  # the cross-model metric the gap is measured on
    columns: tuple[str, ...]  # metric names (no prefix) shown as cross-model columns
    fixed_backbone: str
    fixed_stem_stride: int


DOMAINS = {
    "fashion": Domain("configs/quickstart.yaml", "r1", ("r1", "map"), "mobilenetv3_small_050", 1),
    "faces": Domain("configs/faces.yaml", "tar_far_1e-2", ("tar_far_1e-2", "tar_far_1e-3", "rank1"),
                    "mobilenetv3_small_075", 1),
}
LABELS = {"r1": "R@1", "r5": "R@5", "map": "mAP", "tar_far_1e-2": "TAR@FAR=1e-2", "tar_far_1e-3": "TAR@FAR=1e-3",
          "rank1": "rank-1"}


@dataclass
class Row:
    method: str
    recipe: str
    mflops: float
    params: int
    cost_reduction: float
    cross: dict[str, float]  # mean over seeds
    homo: dict[str, float]
    seeds: int = 1
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)  # (min, max) over seeds
    note: str = ""
    group: str = ""  # the recipe that made the row


@dataclass
class TableContext:
    domain: Domain
    config: CmpnasConfig
    data: object
    gallery_checkpoint: object
    gallery: object  # GalleryEmbeddings
    task: object
    paragon_flops: int
    device: torch.device
    args: argparse.Namespace
    search_run_id: str | None = None
    tracker: object = None
    rows: list[Row] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


Recipe = Callable[[TableContext], list[Row]]
RECIPES: dict[str, Recipe] = {}


def recipe(name: str) -> Callable[[Recipe], Recipe]:
    def register(function: Recipe) -> Recipe:
        RECIPES[name] = function
        return function

    return register


# -- training and measuring one query model ---------------------------------------------------

def training_settings(config: CmpnasConfig, loss_weights: dict[str, float], seed: int) -> CandidateTrainingSettings:
    t = config.training
    return CandidateTrainingSettings(
        optim=OptimSettings(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, seed=seed),
        loss_weights=loss_weights, channels_last=t.channels_last, mixed_precision=t.mixed_precision,
    )


def train_and_measure(ctx: TableContext, build: Callable[[], torch.nn.Module], resolution: int,
                      loss_weights: dict[str, float], seed: int) -> tuple[dict, dict, object]:
    torch.manual_seed(seed)
    model = build().to(ctx.device)
    channels_last = ctx.config.training.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fine_tune_candidate(model, resolution, ctx.data, ctx.gallery, training_settings(ctx.config, loss_weights, seed),
                        ctx.device)
    data = ctx.data

    def embed(split):
        return embed_images(model, getattr(data, split).images, data.mean, data.std, resolution, ctx.device,
                            channels_last=channels_last)

    queries = embed("query")
    cross = strip(ctx.task.evaluate(queries, data.query.labels, ctx.gallery.gallery, data.gallery.labels, "x"))
    homo = strip(ctx.task.evaluate(queries, data.query.labels, embed("gallery"), data.gallery.labels, "x"))
    return cross, homo, count_complexity(model, (data.in_chans, resolution, resolution))


def strip(metrics: dict[str, float]) -> dict[str, float]:
    return {key.split("_", 1)[1]: value for key, value in metrics.items()}


def seeded_row(ctx: TableContext, method: str, recipe_name: str, build, resolution: int, loss_weights, seeds,
               note: str = "") -> Row:
    runs = []
    for seed in seeds:
        started = time.perf_counter()
        runs.append(train_and_measure(ctx, build, resolution, loss_weights, seed))
        print(f"  {method}, seed {seed}: cross {fmt(runs[-1][0])}, homo {fmt(runs[-1][1])} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    complexity = runs[0][2]
    names = runs[0][0].keys()
    return Row(
        method=method, recipe=recipe_name, mflops=complexity.mflops, params=complexity.params,
        cost_reduction=ctx.paragon_flops / complexity.flops,
        cross={n: statistics.fmean(r[0][n] for r in runs) for n in names},
        homo={n: statistics.fmean(r[1][n] for r in runs) for n in names},
        seeds=len(runs),
        spread={f"cross_{n}": (min(r[0][n] for r in runs), max(r[0][n] for r in runs)) for n in names},
        note=note,
    )


def fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{LABELS.get(k, k)} {v:.2f}" for k, v in metrics.items() if k in LABELS)


# -- recipes ----------------------------------------------------------------------------------

@recipe("paragon")
def paragon(ctx: TableContext) -> list[Row]:
    data, gallery = ctx.data, ctx.gallery
    metrics = strip(ctx.task.evaluate(gallery.query, data.query.labels, gallery.gallery, data.gallery.labels, "x"))
    complexity = paragon_cost(ctx.config, ctx.gallery_checkpoint)
    return [Row(f"paragon {ctx.config.gallery.backbone} (gallery/gallery)", "paragon", complexity.mflops,
                complexity.params, 1.0, metrics, metrics, note="the accuracy ceiling")]


def fixed_model_builder(ctx: TableContext) -> Callable[[], torch.nn.Module]:
    data = ctx.data
    arch = GalleryArchitecture(ctx.args.fixed_backbone or ctx.domain.fixed_backbone, ctx.config.gallery.embed_dim,
                               data.num_classes, data.in_chans, data.image_size,
                               stem_stride=ctx.domain.fixed_stem_stride)
    return lambda: GalleryEmbeddingNet(arch)


def fixed_name(ctx: TableContext) -> str:
    return f"{ctx.args.fixed_backbone or ctx.domain.fixed_backbone} (stem stride {ctx.domain.fixed_stem_stride})"


@recipe("fixed_alone")
def fixed_alone(ctx: TableContext) -> list[Row]:
    return [seeded_row(ctx, f"{fixed_name(ctx)} trained alone", "fixed_alone", fixed_model_builder(ctx),
                       ctx.data.image_size, {"own_classifier": 1.0}, range(ctx.args.seeds),
                       note="no compatibility")]


@recipe("fixed_bct")
def fixed_bct(ctx: TableContext) -> list[Row]:
    weights = dict(ctx.config.training.loss_weights)
    described = " + ".join(f"{w:g} {name}" for name, w in weights.items() if w)
    return [seeded_row(ctx, f"{fixed_name(ctx)} + BCT losses", "fixed_bct", fixed_model_builder(ctx),
                       ctx.data.image_size, weights, range(ctx.args.seeds),
                       note=f"compatibility through parameters only ({described})")]


# Each compatibility loss alone, at the weight it has (or would have) in the default sum:
# l2_regression is 2 x cosine_alignment on unit vectors, hence half its weight.
LOSS_ABLATION = {"bct_influence": 1.0, "cosine_alignment": 10.0, "l2_regression": 5.0, "cross_contrastive": 1.0,
                 "relational": 1.0}


@recipe("losses")
def losses(ctx: TableContext) -> list[Row]:
    default = {name: weight for name, weight in ctx.config.training.loss_weights.items() if weight}
    plans = [(f"{name} alone", {name: weight}) for name, weight in LOSS_ABLATION.items()]
    plans += [(f"default + {name}", {**default, name: weight}) for name, weight in LOSS_ABLATION.items()
              if name not in default and name != "l2_regression"]
    return [seeded_row(ctx, f"{fixed_name(ctx)}, {label}", "losses", fixed_model_builder(ctx), ctx.data.image_size,
                       weights, range(ctx.args.seeds),
                       note=" + ".join(f"{weight:g} {name}" for name, weight in weights.items()))
            for label, weights in plans]


@recipe("cmpnas")
def cmpnas(ctx: TableContext) -> list[Row]:
    from orchestrator.pareto_report import collect_report

    report = collect_report(ctx.tracker, ctx.search_run_id, ctx.config.search.metric)
    budgets = ctx.args.budgets or [round(ctx.config.search.max_mflops * f, 2) for f in (1 / 3, 2 / 3, 1.0)]
    chosen = {}
    for budget in budgets:
        within = [row for row in report.front if row.mflops <= budget]
        if within:
            best = max(within, key=lambda row: row.score)
            chosen.setdefault(best.run_id, (budget, best))
    rows = []
    for budget, candidate in chosen.values():
        run = ctx.tracker.client.get_run(candidate.run_id)
        metrics = run.data.metrics
        spec = ArchSpec.from_json(run.data.params["arch_json"])
        names = ctx.task.metric_names("x")
        recorded = Row(
            method=f"CMP-NAS {candidate.arch_id} (<= {budget:g} MFLOPs), as searched", recipe="cmpnas_searched",
            mflops=metrics["final_mflops"], params=int(metrics["final_params"]),
            cost_reduction=ctx.paragon_flops / metrics["final_flops"],
            cross={n.split("_", 1)[1]: metrics[f"final_cross_{n.split('_', 1)[1]}"] for n in names},
            homo={n.split("_", 1)[1]: metrics[f"final_homo_{n.split('_', 1)[1]}"] for n in names},
            note="search record: selected on the evaluation split, optimistic",
        )
        rows.append(recorded)
        print(f"  {recorded.method}: cross {fmt(recorded.cross)}", flush=True)
        if ctx.args.retrain_seeds:
            rows.append(seeded_row(
                ctx, f"CMP-NAS {candidate.arch_id} (<= {budget:g} MFLOPs), retrained", "cmpnas_retrained",
                lambda spec=spec: build_query_model(spec), spec.resolution, dict(ctx.config.training.loss_weights),
                range(1, ctx.args.retrain_seeds + 1), note="same architecture, fresh seeds"))
    return rows


# -- the run ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", choices=sorted(DOMAINS), required=True)
    parser.add_argument("--workdir", type=Path, required=True, help="MLflow store, gallery, outputs")
    parser.add_argument("--from-run", default=None, help="an existing search (MLflow parent run id) in the workdir")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {list(RECIPES)}")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the fixed-architecture rows")
    parser.add_argument("--retrain-seeds", type=int, default=2, help="fresh seeds per CMP-NAS point (0: none)")
    parser.add_argument("--budgets", type=lambda text: [float(x) for x in text.split(",")], default=None,
                        help="MFLOPs budgets of the CMP-NAS rows; default: 1/3, 2/3 and all of search.max_mflops")
    parser.add_argument("--fixed-backbone", default=None, help="timm model of the fixed rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the table over the search's candidates")
    parser.add_argument("--render-only", action="store_true",
                        help="no training: render the table and plot from the rows a previous run saved")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--results", type=Path, default=None,
                        help="the rows as JSON; default: bench/results/paper_table_<domain>.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    domain = DOMAINS[args.domain]
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = load_config(REPO / domain.config, [
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", f"output_dir={workdir / args.domain}", *args.overrides])
    started = time.perf_counter()
    torch.set_num_threads(args.threads)

    from rich.console import Console

    from orchestrator.driver import run_search
    from orchestrator.search_inputs import load_data
    from orchestrator.gallery_setup import obtain_gallery
    from orchestrator.tracking import SearchTracker
    from workers.gallery_embeddings import compute_gallery_embeddings

    console = Console(width=150)
    run_id = args.from_run
    if run_id is None and "cmpnas" in args.recipes and not args.render_only:
        search_started = time.perf_counter()
        run_id = run_search(config, console).parent_run_id
        print(f"search {run_id}: {time.perf_counter() - search_started:.0f} s", flush=True)
    torch.set_num_threads(args.threads)  # Ray may have changed it
    device = pick_device()
    data = load_data(config)
    checkpoint = obtain_gallery(config, data, device, console.log)
    gallery = None if args.render_only else cached_gallery_embeddings(
        workdir / f"{args.domain}_gallery_embeddings.pkl", checkpoint, data, device, compute_gallery_embeddings)
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment) if run_id else None
    if tracker is not None:
        recorded = tracker.client.get_run(run_id).data.tags.get("gallery_fingerprint")
        if recorded != checkpoint.fingerprint:
            sys.exit(f"search {run_id} used gallery {recorded}, the workdir's gallery is {checkpoint.fingerprint}")
    ctx = TableContext(domain, config, data, checkpoint, gallery, create_task(config.evaluation.task),
                       paragon_cost(config, checkpoint).flops,
                       device, args, run_id, tracker)
    # Rows are saved per recipe after each one: an interrupted run keeps what it measured, and a run
    # of some recipes (same workdir, so the same data, gallery and search) replaces only theirs.
    saved = workdir / f"{args.domain}_table.json"
    by_recipe: dict[str, list[Row]] = {}
    if saved.is_file():
        state = json.loads(saved.read_text())
        for name, rows in state["rows"].items():
            by_recipe[name] = [Row(**{**row, "spread": {k: tuple(v) for k, v in row["spread"].items()}})
                               for row in rows]
        ctx.timings = state["timings"]
    if not args.render_only:
        for name in args.recipes.split(","):
            recipe_started = time.perf_counter()
            print(f"recipe {name}", flush=True)
            by_recipe[name] = [Row(**{**asdict(row), "group": name}) for row in RECIPES[name](ctx)]
            ctx.timings[name] = time.perf_counter() - recipe_started
            saved.write_text(json.dumps({"rows": {k: [asdict(r) for r in v] for k, v in by_recipe.items()},
                                         "timings": ctx.timings}, indent=1))
    ctx.rows = [row for name in RECIPES for row in by_recipe.get(name, [])]
    markdown = render(ctx, sum(ctx.timings.values()))
    print(markdown)
    (workdir / f"{args.domain}_table.md").write_text(markdown)
    results = args.results or REPO / "bench" / "results" / f"paper_table_{args.domain}.json"
    results.write_text(json.dumps(result_rows(ctx), indent=1) + "\n")
    print(f"rows: {results}")
    if args.plot:
        plot(ctx, args.plot)
        print(f"plot: {args.plot}")


def result_rows(ctx: TableContext) -> list[dict]:
    """The rows for ``--results``: name, cost, each cross-model metric and its gap to the paragon, seeds."""
    paragon_row = next((row for row in ctx.rows if row.recipe == "paragon"), None)
    rows = []
    for row in ctx.rows:
        entry = {"name": row.method, "recipe": row.recipe, "mflops": round(row.mflops, 4),
                 "cost_reduction": round(row.cost_reduction, 2), "seeds": row.seeds, "note": row.note}
        for metric in ctx.domain.columns:
            if metric in row.cross:
                entry[f"cross_{metric}"] = round(row.cross[metric], 2)
                if paragon_row is not None:
                    entry[f"gap_{metric}"] = round(paragon_row.cross[metric] - row.cross[metric], 2)
                if f"cross_{metric}" in row.spread:
                    entry[f"cross_{metric}_range"] = [round(value, 2) for value in row.spread[f"cross_{metric}"]]
        rows.append(entry)
    return rows


def cached_gallery_embeddings(path: Path, checkpoint, data, device, compute):
    """The gallery model's embeddings of the splits, kept in the workdir for reruns of the same gallery."""
    import pickle

    if path.is_file():
        with path.open("rb") as handle:
            cached = pickle.load(handle)  # our own file, written below
        if cached.fingerprint == checkpoint.fingerprint and len(cached.train) == len(data.train):
            return cached
    gallery = compute(checkpoint, data, device)
    with path.open("wb") as handle:
        pickle.dump(gallery, handle)
    return gallery


def render(ctx: TableContext, seconds: float) -> str:
    domain, config = ctx.domain, ctx.config
    head = domain.headline
    paragon_row = next((row for row in ctx.rows if row.recipe == "paragon"), None)
    lines = [
        f"### {ctx.args.domain}: {ctx.data.name}, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU"
        if ctx.device.type == "cpu" else f"### {ctx.args.domain}: {ctx.data.name} on {ctx.device}",
        "",
        f"- data: {len(ctx.data.train)} train, {len(ctx.data.query)} query, {len(ctx.data.gallery)} gallery images "
        f"at {ctx.data.image_size} px; task {config.evaluation.task}; search metric {config.search.metric}; "
        f"search run {ctx.search_run_id}",
        f"- training of every query model: {config.training.epochs} epochs, batch {config.training.batch_size}, "
        f"lr {config.training.lr:g}; seeds: fixed rows {ctx.args.seeds}, CMP-NAS retrained "
        f"{ctx.args.retrain_seeds} (mean, range in brackets)",
        f"- FLOPs: {FLOPS_CONVENTION}; cost x = paragon FLOPs / query FLOPs; gap = paragon "
        f"{LABELS[head]} - cross-model {LABELS[head]}, in points",
        f"- time per recipe, search excluded: {seconds / 60:.1f} min ("
        + ", ".join(f"{name} {value:.0f} s" for name, value in ctx.timings.items()) + ")",
        "",
    ]
    columns = [f"cross {LABELS[c]}" for c in domain.columns]
    lines.append("| method | MFLOPs | params | cost x | " + " | ".join(columns)
                 + f" | homo {LABELS[head]} | gap {LABELS[head]} | seeds |")
    lines.append("|---" * (7 + len(columns)) + "|")
    for row in ctx.rows:
        cells = []
        for name in domain.columns:
            cell = f"{row.cross[name]:.2f}"
            low_high = row.spread.get(f"cross_{name}")
            if low_high and row.seeds > 1:
                cell += f" [{low_high[0]:.1f}-{low_high[1]:.1f}]"
            cells.append(cell)
        gap = paragon_row.cross[head] - row.cross[head] if paragon_row else math.nan
        lines.append(f"| {row.method} | {row.mflops:.2f} | {row.params / 1e6:.2f}M | {row.cost_reduction:.1f} | "
                     + " | ".join(cells) + f" | {row.homo[head]:.2f} | {gap:+.2f} | {row.seeds} |")
    return "\n".join(lines) + "\n"


def plot(ctx: TableContext, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from orchestrator.pareto_report import collect_report

    head = ctx.domain.headline
    figure, axes = plt.subplots(figsize=(7, 4.5))
    if ctx.tracker is not None:
        report = collect_report(ctx.tracker, ctx.search_run_id, ctx.config.search.metric)
        for row_set, style, label in ((report.candidates, dict(c="0.7", s=20), "searched candidates"),):
            axes.scatter([r.mflops for r in row_set],
                         [ctx.tracker.client.get_run(r.run_id).data.metrics[f"final_cross_{head}"] for r in row_set],
                         label=label, **style)
        front = report.front
        axes.plot([r.mflops for r in front],
                  [ctx.tracker.client.get_run(r.run_id).data.metrics[f"final_cross_{head}"] for r in front],
                  "-", c="tab:red", alpha=0.5, label=f"search front ({ctx.config.search.metric})")
    markers = {"paragon": ("*", "tab:blue", 250), "fixed_alone": ("x", "k", 80), "fixed_bct": ("^", "tab:green", 80),
               "cmpnas_searched": ("o", "tab:red", 60), "cmpnas_retrained": ("D", "tab:purple", 60)}
    seen = set()
    for row in ctx.rows:
        marker, colour, size = markers.get(row.recipe, ("s", "tab:orange", 60))
        label = row.recipe if row.recipe not in seen else None
        seen.add(row.recipe)
        axes.scatter([row.mflops], [row.cross[head]], marker=marker, c=colour, s=size, label=label, zorder=3)
    axes.set_xscale("log")
    axes.set_xlabel("query model MFLOPs (fvcore, 1 multiply-add = 1 flop)")
    axes.set_ylabel(f"cross-model {LABELS[head]} (%)")
    axes.set_title(f"{ctx.args.domain}: cross-model accuracy vs query FLOPs")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    main()

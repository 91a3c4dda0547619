"""The ``cmpnas`` command line: gallery training, searches, and Pareto fronts of past searches."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from orchestrator.config import ConfigError, load_config

app = typer.Typer(help="Compatibility-aware neural architecture search for heterogeneous visual search.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
gallery_app = typer.Typer(help="The frozen gallery (paragon) model.", no_args_is_help=True)
app.add_typer(gallery_app, name="gallery")
# Outside a terminal rich would wrap tables at 80 columns; logs and CI output read better wider.
console = Console(width=None if sys.stdout.isatty() else 150)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config; default: the embedded configs/quickstart.yaml")
SetOption = typer.Option(None, "--set", help="override a field, e.g. --set search.num_candidates=16 (repeatable)")


def _user_errors() -> tuple[type[BaseException], ...]:
    from orchestrator.driver import OutputDirError, ResourceRequestError
    from search_space import OutOfSpaceError, SpecFormatError
    from workers.checkpoint import CheckpointError
    from workers.datasets import DataError

    return (ConfigError, DataError, CheckpointError, OutOfSpaceError, SpecFormatError, OutputDirError,
            ResourceRequestError)


def _fail(error: BaseException) -> None:
    console.print(f"[bold red]error:[/] {type(error).__name__}: {error}", markup=True, highlight=False)
    raise typer.Exit(code=2)


@app.command()
def search(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = SetOption) -> None:
    """Run a search: gallery model, candidates on Ray Tune, results and Pareto front in MLflow."""
    try:
        settings = load_config(config, overrides)
        from orchestrator.driver import run_search

        run_search(settings, console)
    except _user_errors() as error:
        _fail(error)


@gallery_app.command("train")
def gallery_train(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = SetOption) -> None:
    """Train the gallery model and save it to gallery.checkpoint (or OUTPUT_DIR/gallery.safetensors)."""
    try:
        settings = load_config(config, overrides)
        from evaluators import RetrievalEvaluator
        from orchestrator.driver import load_data, prepare_output_dir
        from orchestrator.gallery_setup import train_and_save_gallery
        from workers.preprocess import embed_images, pick_device

        prepare_output_dir(settings)
        data = load_data(settings)
        device = pick_device()
        checkpoint = train_and_save_gallery(settings, data, device, console.log)
        model = checkpoint.model
        embed = lambda split: embed_images(model, getattr(data, split).images, checkpoint.mean, checkpoint.std,  # noqa: E731
                                           model.arch.image_size, device)
        metrics = RetrievalEvaluator().evaluate(embed("query"), data.query.labels, embed("gallery"), data.gallery.labels)
        console.print(f"paragon (gallery/gallery): R@1 {metrics.recall_at_1:.2f}, R@5 {metrics.recall_at_5:.2f}, "
                      f"mAP {metrics.mean_average_precision:.2f}")
    except _user_errors() as error:
        _fail(error)


@app.command()
def pareto(
    experiment: str = typer.Option(None, help="MLflow experiment; default: tracking.experiment of the config"),
    run_id: str = typer.Option(None, help="parent run of a search; default: the experiment's latest search"),
    tracking_uri: str = typer.Option(None, help="default: MLFLOW_TRACKING_URI, else tracking.uri of the config"),
    config: Optional[Path] = ConfigOption,
    show_all: bool = typer.Option(False, "--all", help="list every candidate, not only the front"),
) -> None:
    """Show the Pareto front of an existing search from MLflow."""
    try:
        settings = load_config(config)
        from orchestrator.pareto_report import collect_report, render_table
        from orchestrator.tracking import ROLE_TAG, SearchTracker, resolve_tracking_uri

        uri = tracking_uri or resolve_tracking_uri(settings.tracking.uri)
        name = experiment or settings.tracking.experiment
        tracker = SearchTracker.open_existing(uri, name)
        if run_id is None:
            searches = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'search'",
                                                  order_by=["attributes.start_time DESC"], max_results=1)
            if not searches:
                raise ConfigError(f"experiment '{name}' at {uri} has no cmpnas search runs; run `cmpnas search` first")
            run_id = searches[0].info.run_id
        render_table(collect_report(tracker, run_id), console, only_front=not show_all)
    except _user_errors() as error:
        _fail(error)
    except LookupError as error:
        _fail(error)


def main() -> None:
    app(prog_name="cmpnas")


if __name__ == "__main__":
    sys.exit(main())

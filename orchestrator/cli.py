"""The ``cmpnas`` command line: gallery training, searches, and Pareto fronts of past searches."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from orchestrator.common.credentials import redact_text
from orchestrator.common.log_redaction import install_log_redaction
from orchestrator.config import ConfigError, load_config
from orchestrator.tracking.errors import TrackingUnavailableError
from search_space.errors import CmpnasError

app = typer.Typer(help="Compatibility-aware neural architecture search for heterogeneous visual search.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
gallery_app = typer.Typer(help="The frozen gallery (paragon) model.", no_args_is_help=True)
app.add_typer(gallery_app, name="gallery")
supernet_app = typer.Typer(help="The weight-sharing supernet that candidates can inherit from.", no_args_is_help=True)
app.add_typer(supernet_app, name="supernet")
space_app = typer.Typer(help="The search space: its architectures and the FLOPs budgets they fit.",
                        no_args_is_help=True)
app.add_typer(space_app, name="space")
# Outside a terminal rich would wrap tables at 80 columns; logs and CI output read better wider.
console = Console(width=None if sys.stdout.isatty() else 150)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config; default: the embedded configs/quickstart.yaml")
SetOption = typer.Option(None, "--set", help="override a field, e.g. --set search.num_candidates=16 (repeatable)")


# How long `search --resume-if-unfinished` waits for output_dir's lock: an NFSv4 lease (about 90 s)
# held for a lost node, with margin.
RESTARTED_JOB_LOCK_WAIT_S = 180.0
# Exit status when results are safe in the local journal but not yet in MLflow: retry later.
EXIT_TRACKING_UNAVAILABLE = TrackingUnavailableError.exit_code


@app.callback()
def _before_every_command() -> None:
    """Log records, and the traceback of an unexpected error, are redacted before any command runs
    (``orchestrator.common.log_redaction``)."""
    install_log_redaction()


@contextmanager
def reported_errors() -> Iterator[None]:
    """Every error cmpnas reports to its user (``CmpnasError``) as one line, credentials redacted, and
    its exit status: 2, or 3 when the records wait in the local journal for `cmpnas sync`. Anything
    else is a bug and keeps its traceback (redacted by the hook ``install_log_redaction`` installs, exit
    status 1)."""
    try:
        yield
    except CmpnasError as error:
        if error.exit_code == EXIT_TRACKING_UNAVAILABLE:
            console.print(f"[bold yellow]tracking unavailable:[/] {redact_text(str(error))}", markup=True,
                          highlight=False)
        else:
            console.print(f"[bold red]error:[/] {type(error).__name__}: {redact_text(str(error))}", markup=True,
                          highlight=False)
        raise typer.Exit(code=error.exit_code) from None


@app.command()
def search(
    config: Optional[Path] = ConfigOption,
    overrides: Optional[list[str]] = SetOption,
    address: Optional[str] = typer.Option(None, help="join a Ray cluster: 'auto', HOST:6379 or ray://host:10001 "
                                          "(ray.address; see docs/deploy.md for token auth)"),
    resume: bool = typer.Option(False, "--resume", help="continue the interrupted search recorded in output_dir: "
                                "same MLflow parent run, finished trials kept (see docs/reliability.md)"),
    resume_if_unfinished: bool = typer.Option(
        False, "--resume-if-unfinished", help="resume the search in output_dir if it is unfinished, else start a new "
        "one: the entrypoint of a job that may be started again (a KubeRay RayJob re-applied after a lost head)"),
) -> None:
    """Run a search: gallery model, candidates on Ray Tune, results and Pareto front in MLflow."""
    with reported_errors():
        extra = [*(overrides or []), *([f"ray.address={address}"] if address else [])]
        settings = load_config(config, extra)
        if resume and resume_if_unfinished:
            raise ConfigError("--resume and --resume-if-unfinished: give one (the second resumes only when there is "
                              "an unfinished search in output_dir)")
        if resume_if_unfinished:
            from orchestrator.search.state import holds_unfinished_search

            resume = holds_unfinished_search(settings.output_dir)
            console.print(f"--resume-if-unfinished: {'resuming the unfinished' if resume else 'no unfinished'} search "
                          f"in {settings.output_dir}" + ("" if resume else "; starting a new one"))
        if resume and config is None:
            settings = _recorded_config(settings, extra)
        from orchestrator.search.driver import run_search

        # A re-started job may find the lock of its lost predecessor still held by a network volume's lease.
        outcome = run_search(settings, console, resume=resume,
                             lock_wait_s=RESTARTED_JOB_LOCK_WAIT_S if resume_if_unfinished else 0.0)
    if outcome.shortfall is not None:  # recorded and printed by the search; not a success
        from orchestrator.search.shortfall import EXIT_SEARCH_SHORT

        raise typer.Exit(code=EXIT_SEARCH_SHORT)


def _recorded_config(settings, overrides: list[str]):
    """Without --config, a resume continues with the configuration the search was started with
    (found in output_dir, which --set output_dir=... may point at), plus the --set overrides."""
    from orchestrator.config import apply_override, validate_config
    from orchestrator.search.state import SearchState, with_earlier_defaults

    recorded = SearchState.load(settings.output_dir)
    if recorded is None:
        return settings
    tree = with_earlier_defaults(recorded.config)
    for assignment in overrides:
        apply_override(tree, assignment)
    return validate_config(tree, source=f"the configuration recorded in {settings.output_dir}")


@app.command()
def sync(
    output_dir: Path = typer.Option(..., help="the output_dir of the search whose journal to send"),
    tracking_uri: Optional[str] = typer.Option(None, help="default: the URI the search was recording to"),
    wait: float = typer.Option(30.0, help="seconds to keep retrying an unreachable tracking server"),
) -> None:
    """Send a search's journaled MLflow records (idempotent) and, once its trials have all ended,
    record its Pareto front."""
    with reported_errors():
        from orchestrator.search.sync import sync_search

        console.print(sync_search(output_dir, tracking_uri, wait))


@gallery_app.command("train")
def gallery_train(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = SetOption) -> None:
    """Train a cmpnas gallery model and save it to gallery.path (or OUTPUT_DIR/gallery.safetensors)."""
    with reported_errors():
        settings = load_config(config, overrides)
        if settings.gallery.source != "cmpnas":
            raise ConfigError(f"`cmpnas gallery train` trains a gallery model of gallery.source 'cmpnas'; this config "
                              f"uses gallery.source={settings.gallery.source!r}, a model that needs no training here")
        from orchestrator.setup.gallery import train_configured_gallery

        metrics = train_configured_gallery(settings, console.log)
        console.print(f"paragon (gallery/gallery): R@1 {metrics.recall_at_1:.2f}, R@5 {metrics.recall_at_5:.2f}, "
                      f"mAP {metrics.mean_average_precision:.2f}")


@gallery_app.command("embed")
def gallery_embed(
    config: Optional[Path] = ConfigOption,
    overrides: Optional[list[str]] = SetOption,
    output: Path = typer.Option(..., help="the embedded gallery folder: embeddings.npy, ids.txt, index.faiss, "
                                "gallery.json (usable as gallery.source: embeddings); rerun to resume"),
    images: Optional[Path] = typer.Option(None, help="embed every image under this folder (ids: paths relative to "
                                          "it); default: the configured data's splits"),
    split: Optional[list[str]] = typer.Option(None, help="without --images: the data splits to embed (repeatable; "
                                              "default: train, query and gallery)"),
    index: str = typer.Option("Flat", help="FAISS index factory, inner product: Flat, HNSW32, IVF1024,Flat, ... "
                              "(IVF lists for N images: about 4 sqrt(N); docs/benchmarks.md)"),
    nprobe: Optional[int] = typer.Option(None, help="IVF: lists a query visits, 1 to nlist, recorded as the index's "
                                         "default; default: nlist/64, at least 16"),
    ef_search: Optional[int] = typer.Option(None, help="HNSW: candidates a search keeps (efSearch), recorded as the "
                                            "index's default; default: 128"),
    shard_size: int = typer.Option(4096, help="images per shard, the unit of resuming"),
    batch_size: int = typer.Option(256, help="images per forward pass of the gallery model"),
    address: Optional[str] = typer.Option(None, help="embed on a Ray cluster: 'auto' or ray://host:10001 "
                                          "(ray.address); the gallery model and images at the same path on every node"),
    actors: Optional[int] = typer.Option(None, help="on Ray: embedding actors; default: one per GPU, else per CPU"),
) -> None:
    """Embed an image collection with the configured gallery model, into a folder with a FAISS index."""
    with reported_errors():
        settings = load_config(config, [*(overrides or []), *([f"ray.address={address}"] if address else [])])
        from orchestrator.serving.embed import SPLITS, EmbedOptions, GalleryEmbedRequest, embed_configured_gallery

        options = EmbedOptions(index_factory=index, nprobe=nprobe, ef_search=ef_search, shard_size=shard_size, batch_size=batch_size, log=console.log,
                               console=console)
        request = GalleryEmbedRequest(output_dir=output, images=images, splits=tuple(split or SPLITS), options=options,
                                      actors=actors)
        if images is not None and split:
            raise ConfigError("--split chooses among the configured data's splits; with --images the folder is "
                              "embedded whole: give one or the other")
        embedded = embed_configured_gallery(settings, request)
        console.print(f"{embedded.folder}: {embedded.count} embeddings (D={embedded.record['embed_dim']}), index "
                      f"{embedded.record['index_factory']!r}, {embedded.shards_reused} of {embedded.shards_total} "
                      "shards reused")


@gallery_app.command("export")
def gallery_export(
    config: Optional[Path] = ConfigOption,
    overrides: Optional[list[str]] = SetOption,
    output: Path = typer.Option(..., help="folder for gallery.onnx and gallery.json"),
) -> None:
    """Export the cmpnas-trained gallery model as ONNX (gallery.source: onnx reads it without gallery.input)."""
    with reported_errors():
        settings = load_config(config, overrides)
        from orchestrator.export.gallery_model import export_configured_gallery

        exported = export_configured_gallery(settings, output, console.log)
        console.print(f"{exported.onnx_path} (fingerprint as gallery.source onnx: "
                      f"{exported.record['source_fingerprints']['onnx'][:12]})")


@supernet_app.command("train")
def supernet_train(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = SetOption,
                   address: Optional[str] = typer.Option(None, help="join a Ray cluster (ray.address)")) -> None:
    """Train the compatible supernet once and save it to supernet.checkpoint (or OUTPUT_DIR/supernet.safetensors)."""
    with reported_errors():
        settings = load_config(config, [*(overrides or []), *([f"ray.address={address}"] if address else [])])
        from orchestrator.supernet.job import train_supernet_job

        train_supernet_job(settings, console)


@space_app.command("info")
def space_info(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = SetOption) -> None:
    """The configured space's smallest and largest architecture, their MFLOPs and the paragon's cost
    reduction at each end, and how many architectures budgets admit (search.max_mflops, budgets_mflops)."""
    with reported_errors():
        settings = load_config(config, overrides)
        from orchestrator.search.space_info import describe_space, render_space_info

        render_space_info(describe_space(settings), console)


def _deprecated_run_id(old: Optional[str], new: Optional[str], new_name: str) -> Optional[str]:
    """``--run-id`` (hidden, deprecated) as an alias of ``new_name``: one line on stderr saying so."""
    if old is None:
        return new
    if new is not None:
        raise ConfigError(f"--run-id is the deprecated name of {new_name}: give only {new_name}")
    typer.echo(f"warning: --run-id is deprecated here; use {new_name}", err=True)
    return old


@app.command()
def pareto(
    experiment: str = typer.Option(None, help="MLflow experiment; default: tracking.experiment of the config"),
    search_run_id: str = typer.Option(None, help="parent run of a search; default: the experiment's latest search"),
    run_id: str = typer.Option(None, "--run-id", hidden=True, help="deprecated: --search-run-id"),
    tracking_uri: str = typer.Option(None, help="default: MLFLOW_TRACKING_URI, else tracking.uri of the config"),
    config: Optional[Path] = ConfigOption,
    show_all: bool = typer.Option(False, "--all", help="list every candidate, not only the front"),
) -> None:
    """Show the Pareto front of an existing search from MLflow, with each candidate's run id
    (`cmpnas export --candidate-run-id`)."""
    with reported_errors():
        search_run_id = _deprecated_run_id(run_id, search_run_id, "--search-run-id")
        settings = load_config(config)
        from orchestrator.results.final_training import collect_final_training, render_final_training
        from orchestrator.results.front import collect_report
        from orchestrator.results.front_rendering import render_table
        from orchestrator.tracking.client import SearchTracker, resolve_tracking_uri

        uri = tracking_uri or resolve_tracking_uri(settings.tracking.uri)
        name = experiment or settings.tracking.experiment
        tracker = SearchTracker.open_existing(uri, name)
        search_run_id = tracker.search_run_id(search_run_id, name)
        report = collect_report(tracker, search_run_id)
        render_table(report, console, only_front=not show_all, run_ids=True)
        render_final_training(collect_final_training(tracker, search_run_id, report), report, console)


@app.command()
def export(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config of tracking.* and export.*; the "
                                          "data and gallery come from the search's recorded configuration"),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="tracking.* and export.* fields, and where the data is read from (data.root, "
        "data.cache_dir, ...: applied over the search's recorded configuration); repeatable"),
    experiment: str = typer.Option(None, help="default: tracking.experiment of the config"),
    tracking_uri: str = typer.Option(None, help="default: tracking.uri, else MLFLOW_TRACKING_URI, else sqlite"),
    search_run_id: str = typer.Option(None, help="parent run of a search; default: the latest search"),
    candidate_run_id: str = typer.Option(None, help="export this one candidate run instead of the Pareto front "
                                         "(the run id column of `cmpnas pareto --all`; a final training's "
                                         "run id exports the retrained model)"),
    run_id: str = typer.Option(None, "--run-id", hidden=True, help="deprecated: --candidate-run-id"),
    max_mflops: float = typer.Option(None, help="export the best candidate within this budget (by the search's "
                                     "search.metric, as the budget sweep ranks)"),
    output: Path = typer.Option(None, help="default: export.output_dir, else OUTPUT_DIR/export"),
    gallery: Path = typer.Option(None, help="the gallery model (a folder for embeddings) of the search's "
                                 "gallery.source; default: the search's gallery.path"),
    no_register: bool = typer.Option(False, "--no-register", help="package and check, but skip the registry"),
    index: Path = typer.Option(None, exists=True, file_okay=False, help="an embedded gallery (`cmpnas gallery embed --output`) of the search's "
                               "gallery model, bundled into each registered model so that `mlflow models serve` "
                               "searches it; default: the registered models embed only"),
    allow_torchscript: bool = typer.Option(
        False, "--allow-torchscript", help="load the search's TorchScript gallery model, which runs code from the "
        "file (gallery.allow_torchscript; the recorded value is not used); its recorded fingerprint is checked first"),
) -> None:
    """Export Pareto-optimal candidates (ONNX, TorchScript, safetensors) with a compatibility manifest,
    checked on the search's recorded data."""
    with reported_errors():
        candidate_run_id = _deprecated_run_id(run_id, candidate_run_id, "--candidate-run-id")
        from orchestrator.export import ExportRequest, export_candidates
        from orchestrator.export.data_identity import export_overrides
        from orchestrator.serving.pyfunc import SearchFlavour
        from orchestrator.tracking.client import resolve_tracking_uri

        data_overrides, own_overrides = export_overrides(overrides or [])
        settings = load_config(config, own_overrides)

        request = ExportRequest(
            tracking_uri=tracking_uri or resolve_tracking_uri(settings.tracking.uri),
            experiment=experiment or settings.tracking.experiment,
            model_name=settings.export.registered_model_name,
            output_dir=output or (Path(settings.export.output_dir) if settings.export.output_dir else None),
            search_run_id=search_run_id, candidate_run_id=candidate_run_id, max_mflops=max_mflops,
            gallery_path=gallery, register=not no_register, data_overrides=tuple(data_overrides),
            allow_torchscript=allow_torchscript, served_flavour=SearchFlavour(index),
        )
        for model in export_candidates(request, console.log):
            registered = f", registered as {request.model_name} v{model.version} ({model.alias})" if model.version else ""
            console.print(f"{model.arch_id}: {model.folder}{registered}")


@app.command("verify-compat")
def verify_compat(
    query_model: Path = typer.Option(..., help="an export folder (with compatibility.json)"),
    gallery: Path = typer.Option(..., help="the gallery model in production: a file (a folder for embeddings) of "
                                 "gallery.source, e.g. --set gallery.source=onnx"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config whose data to measure on (checked "
                                          "against the data the export recorded); default: the recorded data"),
    overrides: Optional[list[str]] = SetOption,
    force: bool = typer.Option(False, help="measure even if the gallery fingerprint or the data differ from the "
                               "manifest's"),
) -> None:
    """Recompute cross-model metrics of an exported query model against a gallery model of any source,
    on the data the export recorded."""
    with reported_errors():
        from orchestrator.export import VerifyOptions, verify_compatibility
        from orchestrator.export.data_identity import data_location_overrides

        data_overrides: list[str] = []
        rest = list(overrides or [])
        if config is None:  # the recorded data: only where it is read from may be overridden
            data_overrides, rest = data_location_overrides(rest, "cmpnas verify-compat without --config")
        settings = load_config(config, [*rest, f"gallery.path={gallery}", "gallery.checkpoint=null"])

        options = VerifyOptions(force=force, recorded_data=config is None, data_overrides=data_overrides)
        manifest, metrics = verify_compatibility(query_model, gallery, settings, options, log=console.print)
        recorded = manifest["metrics"]["cross_model"]
        console.print(f"cross-model R@1 {metrics.recall_at_1:.2f} (recorded {recorded['r1']:.2f}), "
                      f"mAP {metrics.mean_average_precision:.2f} (recorded {recorded['map']:.2f}) "
                      f"on {metrics.num_queries} queries against {metrics.num_gallery} gallery images")


@app.command()
def query(
    images: list[Path] = typer.Argument(..., help="image files or folders (every image under them)"),
    model: str = typer.Option(..., help="an export folder of a query model (with compatibility.json), or a "
                              "registered one: models:/NAME@ALIAS or models:/NAME/VERSION"),
    index: Path = typer.Option(..., help="an embedded gallery folder (`cmpnas gallery embed --output`)"),
    tracking_uri: Optional[str] = typer.Option(None, help="the MLflow server holding --model models:/...; default: "
                                               "MLFLOW_TRACKING_URI"),
    k: int = typer.Option(5, help="results per image"),
    force: bool = typer.Option(False, help="query even if the gallery's fingerprint differs from the manifest's"),
    nprobe: Optional[int] = typer.Option(None, help="IVF index: lists to visit (1 to nlist); default: the index's "
                                         "recorded one"),
    ef_search: Optional[int] = typer.Option(None, help="HNSW index: efSearch; default: the index's recorded one"),
) -> None:
    """Nearest gallery images of each image: one JSON line per image, {"image", "results": [{"id", "score"}]}."""
    import json

    with reported_errors():
        from orchestrator.serving.query import query_images

        for result in query_images(model, index, images, k, force=force,
                                   knobs={"nprobe": nprobe, "ef_search": ef_search}):
            typer.echo(json.dumps(result.to_json()))


@app.command()
def serve(
    model: str = typer.Option(..., help="an export folder of a query model (with compatibility.json), or a "
                              "registered one: models:/NAME@ALIAS or models:/NAME/VERSION"),
    index: Path = typer.Option(..., help="an embedded gallery folder (`cmpnas gallery embed --output`)"),
    tracking_uri: Optional[str] = typer.Option(None, help="the MLflow server holding --model models:/...; default: "
                                               "MLFLOW_TRACKING_URI"),
    host: str = typer.Option("127.0.0.1", help="the address Serve's HTTP proxy listens on (0.0.0.0: every "
                             "interface)"),
    port: int = typer.Option(8000, help="the HTTP port"),
    replicas: int = typer.Option(1, help="replicas, each holding the model and the index"),
    num_cpus: float = typer.Option(1.0, help="CPUs per replica"),
    num_gpus: float = typer.Option(0.0, help="GPUs per replica (ONNX Runtime's CUDA provider: cmpnas installed "
                                   "with the gpu extra)"),
    max_batch_size: int = typer.Option(16, help="requests batched into one model call"),
    batch_wait_timeout_s: float = typer.Option(0.01, help="how long a batch waits to fill"),
    k_default: int = typer.Option(5, help="results per image when a request gives no k"),
    max_k: int = typer.Option(1000, help="the largest k a request may ask"),
    max_images: int = typer.Option(64, help="images per request at most"),
    max_body_mb: float = typer.Option(32.0, help="request body size limit in MiB (413 above it)"),
    force: bool = typer.Option(False, help="serve even if the gallery's fingerprint differs from the manifest's"),
    nprobe: Optional[int] = typer.Option(None, help="IVF index: lists a search visits (1 to nlist); default: the "
                                         "index's recorded one"),
    ef_search: Optional[int] = typer.Option(None, help="HNSW index: efSearch; default: the index's recorded one"),
    address: Optional[str] = typer.Option(None, help="a Ray cluster to join ('auto', HOST:PORT); default: a "
                                          "local Ray"),
) -> None:
    """Serve nearest-gallery-id search over HTTP (Ray Serve): POST /search, POST /embed, GET /healthz, /readyz."""
    with reported_errors():
        from orchestrator.serving.registry_reference import resolve_served_model
        from orchestrator.serving.serve.options import ServeOptions
        from orchestrator.serving.serve.runner import serve_until_stopped

        folder, reference, registry_uri = resolve_served_model(model, tracking_uri)
        options = ServeOptions(model=folder, model_reference=reference, tracking_uri=registry_uri, index=index,
                               host=host, port=port, replicas=replicas, num_cpus=num_cpus, num_gpus=num_gpus, max_batch_size=max_batch_size,
                               batch_wait_timeout_s=batch_wait_timeout_s, k_default=k_default, max_k=max_k,
                               max_images=max_images, max_body_mb=max_body_mb, force=force, nprobe=nprobe,
                               ef_search=ef_search, address=address)
        serve_until_stopped(options, typer.echo)  # plain lines: URLs stay whole in a log file


def main() -> None:
    app(prog_name="cmpnas")


if __name__ == "__main__":
    sys.exit(main())

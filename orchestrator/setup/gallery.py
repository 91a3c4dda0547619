"""Getting the frozen gallery model for a job: from its configured source, or trained and saved by cmpnas.

``gallery.source`` picks the loader (``workers.gallery.sources``); this module turns the config
into its request, trains a cmpnas gallery model on first use where none is configured, checks a
cmpnas checkpoint against the data it was trained on, and gives the paragon's cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from evaluators import RetrievalEvaluator, RetrievalMetrics
from evaluators.complexity import ComplexityReport
from evaluators.latency import LatencySettings
from orchestrator.common.output_lock import locked_output_dir
from orchestrator.config import CmpnasConfig, ConfigError
from orchestrator.setup.data import load_search_data
from orchestrator.setup.output_dir import prepare_output_dir
from workers.datasets import RetrievalData
from workers.gallery.model import GalleryCheckpoint, load_gallery, save_gallery
from workers.gallery.sources import (
    GalleryModel,
    GallerySourceError,
    GallerySourceRequest,
    InputSpecRequest,
    load_gallery_model,
)
from workers.gallery.sources.cmpnas_checkpoint import CmpnasGalleryModel
from workers.gallery.training import GalleryEarlyStopping, GalleryTrainingSettings, train_gallery
from workers.storage.checkpoint import CheckpointError
from workers.training.fit import OptimSettings
from workers.training.precision import autocast_dtype
from workers.training.preprocess import ModelInput, embed_images, pick_device

CONFIGURED_COST_CONVENTION = "as configured in gallery.mflops"

Log = Callable[[str], None]


def gallery_training_settings(config: CmpnasConfig, train_images: int) -> GalleryTrainingSettings:
    """How the gallery model trains on ``train_images``: ``gallery.epochs`` raised to reach ``gallery.min_steps``."""
    gallery = config.gallery
    return GalleryTrainingSettings(
        backbone=gallery.backbone,
        embed_dim=gallery.embed_dim,
        stem_stride=gallery.stem_stride,
        mixed_precision=gallery.mixed_precision,
        optim=OptimSettings(epochs=gallery.epochs_for(train_images), batch_size=gallery.batch_size, lr=gallery.lr,
                            weight_decay=gallery.weight_decay, seed=config.data.seed),
    )


# Early stopping an open-set paragon on its own classes left it weaker on the unseen ones (docs/benchmarks.md,
# "Open-set Fashion-MNIST"); the open-set protocol trains it a fixed schedule instead (docs/protocol.md).
SEEN_CLASS_STOPPING_WARNING = (
    "warning: gallery.patience early-stops this open-set gallery model on the classes it trains on, which can "
    "leave it weaker on the unseen classes it is evaluated on (docs/protocol.md, 'The open-set paragon'): unset "
    "gallery.patience for a fixed schedule, or set data.validation_classes to stop on classes it never trains on")


def gallery_early_stopping(config: CmpnasConfig, data: RetrievalData) -> GalleryEarlyStopping | None:
    """gallery.patience's early stopping, scored on ``data``'s query/gallery: the selection view's
    validation halves (``orchestrator.setup.inputs.load_search_data``), never the held-out splits."""
    if config.gallery.patience is None:
        return None
    return GalleryEarlyStopping(validation=data, task=config.evaluation.task,
                                metric=config.search.metric.removeprefix("cross_"), patience=config.gallery.patience)


def train_and_save_gallery(config: CmpnasConfig, data: RetrievalData, device: torch.device, log: Log) -> GalleryCheckpoint:
    """Train on ``data.train`` and save to the configured path; ``data`` is the selection view when the
    config has a validation split (early stopping scores its query/gallery halves)."""
    path = config.gallery_checkpoint_path
    settings = gallery_training_settings(config, len(data.train))
    stopper = gallery_early_stopping(config, data)
    raised = "" if settings.optim.epochs == config.gallery.epochs else (
        f" (gallery.epochs={config.gallery.epochs} raised to reach gallery.min_steps={config.gallery.min_steps})")
    schedule = f"{settings.optim.epochs} epochs{raised}" if stopper is None else (
        f"up to {settings.optim.epochs} epochs, stopping after {stopper.patience} without a better validation "
        f"{stopper.metric} ({len(data.query) + len(data.gallery)} validation images)")
    precision = "bfloat16" if autocast_dtype(device, settings.mixed_precision, on_cpu=True) else "float32"
    log(f"training gallery model {settings.backbone} (D={settings.embed_dim}) on {len(data.train)} images, "
        f"{schedule}, on {device}" + (" with bfloat16 autocast" if precision == "bfloat16" else ""))
    if stopper is not None and config.data.protocol == "open_set" and not config.data.validation_classes:
        log(SEEN_CLASS_STOPPING_WARNING)

    def report(epoch: int, stats: dict[str, float]) -> None:
        validation = "" if stopper is None else f", validation {stopper.metric} {stats['validation_' + stopper.metric]:.2f}"
        log(f"  gallery epoch {epoch}: loss {stats['loss']:.4f}, {stats['images_per_second']:.0f} images/s{validation}")

    model = train_gallery(data, settings, device, on_epoch=report, early_stopping=stopper)
    info = {"dataset": data.name, "train_images": len(data.train), "epochs": settings.optim.epochs,
            "class_names": list(data.class_names), "split": split_identity(config), "training_precision": precision}
    if stopper is not None:
        info.update(stopper.record())
        log(f"gallery model: best validation {stopper.metric} {stopper.best_score:.2f} at epoch {stopper.best_epoch} "
            f"of {len(stopper.curve)} ({'stopped early' if stopper.stopped_early else 'ran every epoch'})"
            + (f"; trained again for {stopper.retrained_epochs} epochs so that its schedule completes"
               if stopper.retrained_epochs else ""))
    save_gallery(path, model, data.mean, data.std, info)
    checkpoint = load_gallery(path, device)
    log(f"saved gallery checkpoint {path} (fingerprint {checkpoint.fingerprint[:12]})")
    return checkpoint


def train_configured_gallery(config: CmpnasConfig, log: Log) -> RetrievalMetrics:
    """``cmpnas gallery train``: a cmpnas gallery model trained on the configured data (on train less the
    validation images, as a search trains it, early-stopped on them with ``gallery.patience``) and
    saved to gallery.path; returns its gallery/gallery metrics on the query and gallery splits (held
    out when there is a validation split)."""
    if config.gallery.source != "cmpnas":
        raise ConfigError(f"`cmpnas gallery train` trains a gallery model of gallery.source 'cmpnas'; this config "
                          f"uses gallery.source={config.gallery.source!r}, a model that needs no training here")
    device = pick_device()
    with locked_output_dir(prepare_output_dir(config), "cmpnas gallery train"):
        search_data = load_search_data(config)
        checkpoint = train_and_save_gallery(config, search_data.selection, device, log)
    data, model = search_data.reported, checkpoint.model
    model_input = ModelInput(checkpoint.mean, checkpoint.std, model.arch.image_size, device)
    return RetrievalEvaluator().evaluate(embed_images(model, data.query.images, model_input), data.query.labels,
                                         embed_images(model, data.gallery.images, model_input), data.gallery.labels,
                                         data.pair_ids())


def gallery_request(config: CmpnasConfig, data_channels: int, data_image_size: int,
                    expected_fingerprint: str | None = None) -> GallerySourceRequest:
    """``expected_fingerprint``: the one recorded for this gallery (a resume, an export), checked before a
    source whose loading runs code loads the file."""
    gallery = config.gallery
    spec = gallery.input
    return GallerySourceRequest(
        # Absolute: trials open it too, and Tune runs each trial in its own working directory.
        path=config.gallery_path.expanduser().resolve(),
        input=InputSpecRequest(spec.size, spec.channels, tuple(spec.mean) if spec.mean else None,
                               tuple(spec.std) if spec.std else None),
        data_channels=data_channels, data_image_size=data_image_size,
        backbone=gallery.backbone, head=gallery.head, allow_torchscript=gallery.allow_torchscript,
        expected_fingerprint=expected_fingerprint,
    )


def obtain_gallery(config: CmpnasConfig, data: RetrievalData, device: torch.device, log: Log,
                   expected_fingerprint: str | None = None) -> GalleryModel:
    """The configured gallery model; for source cmpnas, the checkpoint (checked against the data) or a
    newly trained one when none is configured. ``expected_fingerprint``: ``gallery_request``'s."""
    if config.gallery.source == "cmpnas":
        return _cmpnas_gallery(config, data, device, log)
    gallery = load_gallery_model(config.gallery.source,
                                 gallery_request(config, data.in_chans, data.image_size, expected_fingerprint))
    log(f"using gallery model {gallery.description} from {config.gallery_path} (D={gallery.embed_dim}, input "
        f"{gallery.input_spec.channels}x{gallery.input_spec.size}px, fingerprint {gallery.fingerprint[:12]})")
    return gallery


def _cmpnas_gallery(config: CmpnasConfig, data: RetrievalData, device: torch.device, log: Log) -> CmpnasGalleryModel:
    path = config.gallery_path
    configured = config.gallery.configured_path
    if configured and not Path(configured).is_file():
        field = "gallery.checkpoint" if config.gallery.checkpoint else "gallery.path"
        raise CheckpointError(
            f"{field}={configured!r} does not exist; train one with `cmpnas gallery train`, remove {field} to "
            "train on first use, or set gallery.source for a model cmpnas did not train"
        )
    if not path.is_file():
        return CmpnasGalleryModel(train_and_save_gallery(config, data, device, log))
    gallery = load_gallery_model("cmpnas", gallery_request(config, data.in_chans, data.image_size))
    check_gallery_fits(gallery.checkpoint, config, data, path)
    log(f"using gallery checkpoint {path} (fingerprint {gallery.fingerprint[:12]})")
    return gallery


def open_existing_gallery(config: CmpnasConfig, data: RetrievalData, path: Path | None = None,
                          expected_fingerprint: str | None = None) -> GalleryModel:
    """The configured gallery model (at ``path`` instead of gallery.path where given), never trained here:
    for export and verification, which must use the model a search ran against (``expected_fingerprint``,
    checked before loading where loading runs code)."""
    if path is not None:
        field = "path" if config.gallery.source != "cmpnas" or not config.gallery.checkpoint else "checkpoint"
        config = config.model_copy(update={"gallery": config.gallery.model_copy(update={field: str(path)})})
    if config.gallery.source == "cmpnas" and not config.gallery_path.is_file():
        raise CheckpointError(f"gallery checkpoint {config.gallery_path} does not exist; pass the gallery model the "
                              "search ran against (--gallery)")
    return load_gallery_model(config.gallery.source,
                              gallery_request(config, data.in_chans, data.image_size, expected_fingerprint))


def paragon_cost(config: CmpnasConfig, gallery: GalleryModel) -> ComplexityReport:
    """The gallery model's cost per image: gallery.mflops where set, else measured; refused when neither
    gives a positive cost. Never zero: every cost reduction of the search divides by it."""
    spec = gallery.input_spec
    fix = ("set gallery.mflops to its MFLOPs per image (one multiply-add = one flop, as fvcore counts), so cost "
           "reductions can be computed")
    if config.gallery.mflops is not None:
        cost = ComplexityReport(flops=round(config.gallery.mflops * 1e6), params=0,
                                input_shape=(spec.channels, spec.size, spec.size),
                                convention=CONFIGURED_COST_CONVENTION)
        if cost.flops <= 0:
            raise ConfigError(f"gallery.mflops={config.gallery.mflops} is below one flop per image; {fix}")
        return cost
    measured = gallery.measure_cost()
    if measured is None:
        raise GallerySourceError(f"the cost of gallery model {gallery.description} cannot be measured from "
                                 f"gallery.source={config.gallery.source!r}; {fix}")
    if measured.flops <= 0:
        raise GallerySourceError(f"the cost of gallery model {gallery.description} was counted as 0 FLOPs "
                                 f"({measured.convention}; not counted: {measured.skipped_ops}); {fix}")
    return measured


def paragon_latency_ms(config: CmpnasConfig, gallery: GalleryModel) -> float | None:
    """The gallery model's latency measured as every candidate's is (``evaluators.latency``: its ONNX
    export in ONNX Runtime, batch 1, one thread), so the two compare; None where latency is not measured
    (``resources.measure_latency`` off) or the model has no graph to time (precomputed embeddings)."""
    if not config.resources.measure_latency:
        return None
    report = gallery.measure_latency(LatencySettings())
    return None if report is None else report.median_ms


def split_identity(config: CmpnasConfig) -> dict:
    """What decides which images (and, open-set, which classes) land in the query and gallery splits.
    The protocol is named only when it is open_set, so closed-set checkpoints keep their identity."""
    data = config.data
    identity = {"source": data.source, "root": data.root, "seed": data.seed, "query_size": data.query_size,
                "gallery_size": data.gallery_size}
    if data.protocol == "open_set":
        identity.update(protocol=data.protocol, train_classes=data.train_classes, train_size=data.train_size)
    if data.validation_size:  # named only when set, so checkpoints without one keep their identity
        identity.update(validation_size=data.validation_size, train_size=data.train_size)
    if data.validation_classes:  # those classes are out of train: a model trained on them saw them
        identity.update(validation_classes=list(data.validation_classes), train_size=data.train_size)
    return identity


def split_must_match(config: CmpnasConfig) -> bool:
    """Whether a reused checkpoint must come from this very split: where train shares a pool with query
    and gallery (file collections), open-set everywhere (a closed-set model has seen the searched classes),
    and with a validation split (a model trained on the validation images would be scored on them)."""
    return (config.data.source in ("image_folder", "manifest") or config.data.protocol == "open_set"
            or config.data.validation_size > 0 or bool(config.data.validation_classes))


def check_gallery_fits(checkpoint: GalleryCheckpoint, config: CmpnasConfig, data: RetrievalData, path: Path) -> None:
    """Refuse a checkpoint made for other data, another split, or another gallery configuration.

    A reused gallery model must not have trained on today's query or gallery images: where the
    train split comes from the same pool as query and gallery (image folders), the split must be
    the one it was trained with.
    """
    arch = checkpoint.model.arch
    info = checkpoint.info
    problems = []
    for field, configured, recorded in (("gallery.backbone", config.gallery.backbone, arch.backbone),
                                        ("gallery.embed_dim", config.gallery.embed_dim, arch.embed_dim),
                                        ("gallery.stem_stride", config.gallery.stem_stride, arch.stem_stride)):
        if configured != recorded:
            problems.append(f"{field} is {configured!r} but the checkpoint's is {recorded!r}")
    if info.get("dataset") != data.name or list(info.get("class_names", [])) != list(data.class_names):
        problems.append(f"it was trained on {info.get('dataset')!r} with classes {info.get('class_names')}, "
                        f"this search uses {data.name!r} with classes {list(data.class_names)}")
    elif split_must_match(config) and info.get("split") != split_identity(config):
        problems.append("it was trained on another split of this data (data.seed, data.query_size, "
                        "data.gallery_size, data.protocol, data.train_classes or data.validation_size differ), so it "
                        "may have seen today's query, gallery or validation images or classes")
    if arch.in_chans != data.in_chans:
        problems.append(f"it takes {arch.in_chans}-channel images, the data has {data.in_chans} (data.channels)")
    if arch.num_classes != data.num_classes:
        problems.append(f"its classifier has {arch.num_classes} classes, the data has {data.num_classes}")
    if arch.image_size != data.image_size:
        problems.append(f"it was trained on {arch.image_size}px images, the data has {data.image_size}px (data.image_size)")
    if problems:
        raise CheckpointError(
            f"gallery checkpoint {path} does not fit this data set: " + "; ".join(problems)
            + ". Point gallery.path at a matching checkpoint or train one with `cmpnas gallery train`"
        )

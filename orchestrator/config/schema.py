"""The search configuration's schema: one typed pydantic tree of frozen sections.

Rules:
* every section rejects unknown keys, inf/NaN and NUL characters; each field has a description
  (``docs/configuration.md`` is generated from them, ``orchestrator.config.reference``);
* names chosen from a registry (``data.source``, ``gallery.source``, ``search_space.name``,
  ``training.loss_weights``, ``evaluation.task``, ``search.strategy``) are checked against the
  registry's names without importing an implementation (``search_space.registry``); a loss's
  parameters and a task's metric names need the classes, which are imported when checked;
* loading YAML, ``--set`` overrides and the wording of errors are ``orchestrator.config.loading``'s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    StrictInt,
    field_validator,
    model_validator,
)

from evaluators.tasks import TASKS
from orchestrator.common.credentials import redact_uri
from orchestrator.config.registries import STRATEGIES
from search_space.registry import SPACES, Registry
from workers.datasets.registry import SOURCES
from workers.gallery.sources.registry import GALLERY_SOURCES
from workers.training.loss_registry import DEFAULT_LOSS_WEIGHTS, LOSSES
from workers.trial_report import DEFAULT_SCORING, Scoring


def registered_in(registry: Registry) -> AfterValidator:
    """A field whose value must be a name of ``registry``: checked by name, importing no implementation."""
    return AfterValidator(registry.check)


def yaml_switch(value: Any) -> Any:
    """YAML 1.1 reads an unquoted ``on``/``off`` as true/false: take those as the words."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class _Section(BaseModel):
    # inf and NaN are never meaningful here (a learning rate of inf trains to NaN for hours).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        # Names and paths end up in file systems and MLflow: a NUL byte is refused there, too late.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


def checked_class_names(names: list) -> list:
    """Class names (or indices) as a config lists them: none blank, none twice."""
    blank = [name for name in names if isinstance(name, str) and not name.strip()]
    if blank:
        raise ValueError(f"class names must not be blank, got {names!r}: name each class as the data names it "
                         "(Fashion-MNIST: e.g. 'sandal')")
    repeated = sorted({str(name) for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"class names must not repeat, got {repeated} more than once")
    return names


class UnlabelledConfig(_Section):
    """The unlabelled alignment pool: images that train the query model only through the label-free losses
    (workers.datasets.unlabelled, docs/data.md)."""

    classes: list[str] = Field(
        default_factory=list, description="class names whose images no split uses form the pool, labels dropped "
                                          "(Fashion-MNIST: the train file's images of those classes outside the train "
                                          "split); never an evaluated image (refused). Empty: no pool")
    size: PositiveInt | None = Field(None, description="pool images: a seeded random subset; null: all of them")
    evaluate_classes: bool = Field(
        True, description="true: query and gallery keep the pool's classes (class-transductive: the catalogue's own "
                          "images, never the evaluated ones); false: those classes are left out of every split "
                          "(a pool of classes neither trained nor evaluated)")
    agreement_size: PositiveInt | None = Field(
        None, description="pool images held back from training (seeded random subset): trials measure the "
                          "label-free cross_agreement (evaluation.agreement_k) on them, not on query and gallery, so "
                          "search.metric: cross_agreement ranks on the catalogue's own unevaluated images. null: none")

    @field_validator("classes")
    @classmethod
    def _class_names(cls, names: list[str]) -> list[str]:
        return checked_class_names(names)


class DataConfig(_Section):
    source: Annotated[str, registered_in(SOURCES)] = Field("fashion_mnist", description="a registered data source")
    root: str | None = Field(None, description="folder of the data (source manifest: the manifest file); default: "
                                               "the source's standard places")
    download: bool = Field(False, description="fetch from the official source (checksummed) when not found locally")
    train_size: PositiveInt | None = Field(
        None, description="training images: a stratified subset of the train split (drawn or given by the files); "
                          "null: all. The embedded default's 12000 is Fashion-MNIST's: a --set of data.source on it "
                          "drops it, so a collection's given splits are not capped unless data.train_size is set")
    trial_train_size: PositiveInt | None = Field(
        None, description="training images of each search trial: a fixed stratified subset of the train split (after "
                          "data.validation_size is carved; data.seed), the same for every trial and strategy, while "
                          "final training (search.final_training) trains on the whole split; null: trials train on "
                          "all of it")
    query_size: PositiveInt = Field(2000, description="query images (verification: probes), a stratified split; "
                                                      "unused where the files give the splits")
    gallery_size: PositiveInt = Field(8000, description="gallery images (verification: enrolled), a stratified split "
                                                        "disjoint from the queries; unused where the files give the "
                                                        "splits")
    image_size: PositiveInt = Field(28, description="square size file collections and ORL faces are resized to "
                                                    "(whole, not cropped); Fashion-MNIST is 28")
    channels: Literal[1, 3] = Field(1, description="1: gray (colour images converted by luma), 3: RGB (gray "
                                                   "repeated); Fashion-MNIST is 1. A file collection of colour "
                                                   "images must set it: left unset, it is refused")
    seed: int = Field(0, description="seed of the stratified splits and subsets")
    validation_size: NonNegativeInt = Field(
        0, description="images carved from the train split (stratified) for selection: candidates are ranked and "
                       "the gallery model early-stopped on them, while query and gallery are only reported; 0: off "
                       "(selection and reporting share query and gallery, an optimistic reading)")
    validation_max_fraction: float = Field(
        0.25, gt=0, le=1, description="the most of the train split data.validation_size may take: a larger size is "
                                      "capped to it, with a warning (a size meant for a large set would otherwise "
                                      "take most of a small collection's training images)")
    validation_classes: list[StrictInt | str] | None = Field(
        None, min_length=2, description="class-disjoint validation: these classes (names or indices) leave the train "
                                        "split, are not evaluated, and candidates are ranked on data.validation_size "
                                        "of their images (0: all); null: validation from the train classes")
    protocol: Literal["closed_set", "open_set"] = Field(
        "closed_set", description="closed_set: train, query and gallery share classes (split by image); open_set: the "
                                  "train classes are disjoint from the query/gallery classes"
    )
    train_classes: PositiveInt | None = Field(
        None, description="open_set on one pool of classes: how many classes (the first, in class order) train; the "
                          "rest are searched; default: half"
    )
    max_bad_fraction: float = Field(
        0.01, ge=0, le=1, description="corrupt, truncated or non-image files are skipped and logged; above this "
                                      "fraction of the files the search stops"
    )
    streaming: Literal["auto", "on", "off"] = Field(
        "auto", description="file collections (image_folder, manifest): on or auto decodes each image once into a "
                            "shard cache on disk, read by batch; off decodes into memory. The built-in sets are small "
                            "and always held in memory"
    )
    cache_dir: str | None = Field(None, description="the shard cache; default: $CMPNAS_CACHE/shards "
                                                    "(~/.cache/cmpnas/shards). A cache another user owns or could "
                                                    "write is refused (docs/reliability.md)")
    cache_trusted_group: str | None = Field(
        None, description="a team's shared data.cache_dir: the group (which this user belongs to) whose members may "
                          "write it; cmpnas then writes the cache group-readable for that group and reads entries of "
                          "that group. null: only caches of this user are read")
    decode_workers: PositiveInt | None = Field(None, description="threads decoding a file collection (into the "
                                                                 "shard cache or memory); default: the CPUs this "
                                                                 "process may use (CPU affinity and cgroup quota)")
    allow_paths_outside_root: bool = Field(
        False, description="source manifest: read files outside the manifest's folder (absolute paths, '..', "
                           "symbolic links leading out); false: such rows are refused")

    unlabelled: UnlabelledConfig = Field(default_factory=lambda: UnlabelledConfig())

    @field_validator("validation_classes")
    @classmethod
    def _validation_class_names(cls, names: list | None) -> list | None:
        return None if names is None else checked_class_names(names)

    @field_validator("streaming", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        return yaml_switch(value)


class GalleryInputConfig(_Section):
    """What the gallery model takes, apart from the query model's input; null: the source's default."""

    size: PositiveInt | None = Field(None, description="square input size in pixels; images are resized to it")
    channels: Literal[1, 3] | None = Field(None, description="1: gray (RGB data is averaged), 3: RGB (gray data is "
                                                            "repeated)")
    mean: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, description="per-channel mean on the [0, 1] scale")
    std: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None, description="per-channel std on the [0, 1] scale")

    @field_validator("mean", "std")
    @classmethod
    def _one_value_per_channel(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and len(values) not in (1, 3):
            raise ValueError(f"needs 1 or 3 values (one per channel), got {len(values)}")
        return values

    @model_validator(mode="after")
    def _as_many_values_as_channels(self) -> GalleryInputConfig:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and self.channels is not None and len(values) != self.channels:
                raise ValueError(f"gallery.input.{name} has {len(values)} values but gallery.input.channels is "
                                 f"{self.channels}")
        return self


# Fields of the gallery model cmpnas trains (source cmpnas); backbone also names the model of source timm.
TRAINED_GALLERY_FIELDS = ("embed_dim", "stem_stride", "epochs", "min_steps", "batch_size", "lr", "weight_decay",
                          "patience", "mixed_precision")
BACKBONE_SOURCES = ("cmpnas", "timm")
NULL_IS_DEFAULT = ("backbone", "embed_dim", "stem_stride", "epochs", "min_steps", "batch_size", "lr", "weight_decay",
                   "mixed_precision")


class GalleryConfig(_Section):
    """The frozen gallery model. Fields of the model cmpnas trains (``TRAINED_GALLERY_FIELDS``, and
    ``backbone`` outside sources cmpnas and timm) do not apply to another source: null, or the code
    default (what the embedded default sets), is taken as unset there; another value is refused,
    naming the field and the fix, rather than silently ignored (a file written for another source
    and switched with ``--set gallery.source`` has them dropped first: ``orchestrator.config.loading``)."""

    source: Annotated[str, registered_in(GALLERY_SOURCES)] = Field(
        "cmpnas", description="a registered gallery source: cmpnas (a checkpoint cmpnas trained), timm, torchscript, "
                              "onnx or embeddings")
    path: str | None = Field(
        None, description="the gallery model's file (a folder for embeddings); for cmpnas default: "
                          "OUTPUT_DIR/gallery.safetensors, trained on first use"
    )
    checkpoint: str | None = Field(None, description="alias of gallery.path for gallery.source 'cmpnas'")
    backbone: str | None = Field("resnet10t", description="any timm model name: the architecture of source timm, "
                                                          "and the one `cmpnas gallery train` trains (null: this "
                                                          "default)")
    head: str | None = Field(None, description="source timm: the module whose output is the embedding; null: the "
                                               "pooled features")
    input: GalleryInputConfig = GalleryInputConfig()
    allow_torchscript: bool = Field(
        False, description="gallery.source torchscript runs the model file's code when it loads (in the driver, "
                           "with the tracking credentials and Ray token, and every worker): refused unless true. "
                           "`cmpnas export` ignores the recorded value: --allow-torchscript")
    classifier: Literal["auto", "from_model", "prototypes", "linear_probe"] = Field(
        "auto", description="classifier of the BCT influence loss: from_model (the model's own), prototypes or "
                            "linear_probe (built once from the train split's gallery embeddings); auto: from_model "
                            "where the model has one for the data's classes, else prototypes"
    )
    mflops: PositiveFloat | None = Field(None, description="the gallery model's MFLOPs per image (one multiply-add = "
                                                           "one flop), where it cannot be measured (source embeddings, "
                                                           "a model whose cost cannot be counted); overrides the "
                                                           "measured cost")
    embed_dim: PositiveInt | None = Field(128, description="embedding size of a gallery model cmpnas trains (null: "
                                                           "this default); other sources take it from the model")
    stem_stride: Literal[1, 2] | None = Field(2, description="stride of the first conv; the stem max-pool is "
                                                            "dropped (null: this default)")
    epochs: PositiveInt | None = Field(2, description="training epochs of a gallery model cmpnas trains (raised to "
                                                     "reach min_steps; null: this default)")
    min_steps: int | None = Field(
        120, ge=0, description="optimizer steps a gallery model cmpnas trains takes at least: gallery.epochs are "
                               "raised to reach it on a small train split, since a model trained a few steps embeds "
                               "every image in nearly one direction and candidates aligned to it learn nothing "
                               "(docs/metrics.md); 0: off; null: this default")
    batch_size: PositiveInt | None = Field(128, description="batch size of that training (null: this default)")
    lr: PositiveFloat | None = Field(2e-3, description="its peak learning rate (AdamW, warm-up, cosine decay; null: "
                                                       "this default)")
    weight_decay: float | None = Field(0.05, ge=0, description="its AdamW weight decay (null: this default)")
    patience: PositiveInt | None = Field(
        None, description="early stopping of a gallery model cmpnas trains: stop after this many epochs without a "
                          "better validation score (search.metric, gallery/gallery on the validation split; needs "
                          "data.validation_size) and keep the best epoch; gallery.epochs is then the most it trains. "
                          "null: train gallery.epochs epochs")
    mixed_precision: bool | None = Field(
        False, description="bfloat16 autocast while cmpnas trains the gallery model, on a GPU or a CPU with native "
                           "bfloat16 (AVX512_BF16, AMX); float32 elsewhere; weights and embeddings stay float32. "
                           "The default resnet10t trained 1.46x faster on an AMD EPYC, 1.10x on an Intel Xeon (AMX) "
                           "(docs/benchmarks.md); null: this default")

    @model_validator(mode="before")
    @classmethod
    def _fields_of_the_source(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        source = values.get("source", cls.model_fields["source"].default)
        if not isinstance(source, str) or source not in GALLERY_SOURCES:
            return values  # the source itself is refused, by name
        # null: the default (patience's default is null itself, no early stopping).
        values = {name: value for name, value in values.items() if value is not None or name not in NULL_IS_DEFAULT}
        foreign = [name for name in trained_only_fields(source) if name in values]
        refused = [name for name in foreign if values[name] not in (None, cls.model_fields[name].default)]
        if refused:
            settings = ", ".join(f"gallery.{name}={values[name]!r}" for name in refused)
            raise ValueError(f"{settings} set(s) the gallery model cmpnas trains (gallery.source 'cmpnas'), and "
                             f"gallery.source is {source!r}, whose model gives its own; remove "
                             f"{'it' if len(refused) == 1 else 'them'} (or set null)")
        # Unset, so that nothing downstream reads them as chosen (model_fields_set).
        return {name: value for name, value in values.items() if name not in foreign}

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        import timm

        # An exact name: list_models() would also accept a pattern such as 'res*'.
        if not timm.is_model(value):
            raise ValueError(f"{value!r} is not a timm model; see timm.list_models() (e.g. 'resnet18')")
        return value

    @model_validator(mode="after")
    def _path_fits_the_source(self) -> GalleryConfig:
        if self.checkpoint is not None:
            if self.source != "cmpnas":
                raise ValueError(f"gallery.checkpoint is the path of a cmpnas checkpoint; for gallery.source="
                                 f"{self.source!r} set gallery.path instead")
            if self.path is not None and self.path != self.checkpoint:
                raise ValueError("gallery.checkpoint and gallery.path name different files; set only gallery.path")
        if self.source != "cmpnas" and self.path is None:
            raise ValueError(f"gallery.source={self.source!r} needs gallery.path: the model file (a folder for "
                             "embeddings)")
        if self.source == "torchscript" and not self.allow_torchscript:
            raise ValueError("gallery.allow_torchscript is false: gallery.source 'torchscript' runs code from the "
                             "model file when it loads (torch.jit.load), in the driver that holds the tracking "
                             "credentials and the Ray token and in every worker. Set gallery.allow_torchscript: true "
                             "(--set gallery.allow_torchscript=true; cmpnas export: --allow-torchscript) only for a "
                             "file you trust, or export the model to ONNX and use gallery.source onnx")
        if self.head is not None and self.source != "timm":
            raise ValueError(f"gallery.head applies to gallery.source 'timm' only, not {self.source!r}")
        return self

    def epochs_for(self, train_images: int) -> int:
        """Epochs a gallery model cmpnas trains on ``train_images``: ``epochs`` raised to reach ``min_steps``."""
        return epochs_reaching(self.min_steps, self.epochs, train_images, self.batch_size)

    def applicable_fields(self) -> list[str]:
        """The fields that apply to this source (those of ``trained_only_fields`` left out)."""
        foreign = trained_only_fields(self.source)
        return [name for name in type(self).model_fields if name not in foreign]

    @property
    def configured_path(self) -> str | None:
        """gallery.path, or its alias gallery.checkpoint."""
        return self.path or self.checkpoint


def epochs_reaching(min_steps: int, epochs: int, images: int, batch_size: int) -> int:
    """``epochs``, raised until a schedule over ``images`` in batches of ``batch_size`` takes ``min_steps`` steps."""
    if min_steps == 0:
        return epochs
    steps_per_epoch = max(1, -(-images // batch_size))
    return max(epochs, -(-min_steps // steps_per_epoch))


def trained_only_fields(source: str) -> tuple[str, ...]:
    """The gallery fields that do not apply to ``source``: those of the model cmpnas trains, and
    ``backbone`` outside the sources that build a timm model."""
    if source == "cmpnas":
        return ()
    return TRAINED_GALLERY_FIELDS + (() if source in BACKBONE_SOURCES else ("backbone",))


class SearchSpaceConfig(_Section):
    name: Annotated[str, registered_in(SPACES)] = Field(
        "mnv3_28", description="a registered space of query architectures: mnv3_28 for 28 px images, mnv3_64 for "
                               "48-64 px, ofa_mnv3_224 for 128-224 px photos; a search refuses a data.image_size "
                               "outside the space's range (mnv3_28 20-56, mnv3_64 48-128, ofa_mnv3_224 128-1024)")


class AugmentationConfig(_Section):
    """Training augmentation of photos; the gallery model's targets are computed on the augmented view."""

    enabled: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on for file collections (image_folder, manifest) of data.image_size >= 64, off "
                            "for the built-in sets, small images and gallery.source embeddings (which cannot follow "
                            "a crop)"
    )
    crop_scale: tuple[float, float] = Field((0.35, 1.0), description="random resized crop: area fraction range")
    crop_ratio: tuple[float, float] = Field((0.75, 4 / 3), description="random resized crop: aspect ratio range")
    horizontal_flip: bool = Field(True, description="random horizontal flip, when augmentation is on")

    @field_validator("enabled", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        return yaml_switch(value)

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _ordered_positive_range(cls, value: tuple[float, float], info) -> tuple[float, float]:
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ValueError("must be [low, high] with 0 < low <= high, both finite")
        if info.field_name == "crop_scale" and high > 1:
            raise ValueError("is a fraction of the image's area: [low, high] with high <= 1")
        return value


class TrainingConfig(_Section):
    epochs: PositiveInt = Field(3, description="training epochs of a candidate in mode scratch (raised to reach "
                                               "min_steps)")
    batch_size: PositiveInt = Field(256, description="batch size of candidate training")
    lr: PositiveFloat = Field(3e-3, description="its peak learning rate (AdamW, warm-up, cosine decay)")
    weight_decay: float = Field(0.05, ge=0, description="its AdamW weight decay")
    channels_last: bool = Field(True, description="about 2x faster depthwise convolutions on CPU")
    mixed_precision: bool = Field(False, description="bfloat16 autocast when a trial runs on a GPU; ignored on CPU")
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS),
        description="weight of each compatibility loss, >= 0, one at least > 0; a map given replaces the default "
                    "whole: a loss left out is off")
    loss_parameters: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="parameters of the compatibility losses, by loss name (a key of loss_weights) and parameter "
                    "name, e.g. {cross_contrastive: {temperature: 0.05}}; a loss or parameter left out takes its "
                    "default (docs/losses.md lists them)")
    mode: Literal["scratch", "inherit", "inherit_zero_shot"] = Field(
        "scratch", description="scratch: train each candidate from random weights for `epochs`; inherit: start from "
                               "the supernet's weights and fine-tune for `finetune_epochs`; inherit_zero_shot: the "
                               "supernet's weights, no training (screening)"
    )
    finetune_epochs: PositiveInt = Field(1, description="fine-tuning epochs of a candidate in mode inherit")
    min_steps: int = Field(
        120, ge=0, description="optimizer steps a scratch candidate takes at least: epochs are raised to reach it on a "
                               "small train split (the quickstart's 10,000 images take 120 steps in 3 epochs)"
    )
    augmentation: AugmentationConfig = Field(default_factory=lambda: AugmentationConfig())
    unlabelled_weight: float = Field(
        1.0, ge=0, description="data.unlabelled: each step adds the label-free losses (cosine_alignment, "
                               "l2_regression, relational) over its pool batch, times their loss_weights times this; "
                               "0: the pool does not train (the same splits, for a baseline)")
    unlabelled_batch_size: PositiveInt | None = Field(
        None, description="data.unlabelled: pool images appended to each labelled batch; null: batch_size")

    def epochs_for(self, train_images: int) -> int:
        """Epochs one candidate trains for in this mode on ``train_images``: ``trial_epochs`` raised, in mode
        scratch, until the schedule has ``min_steps`` optimizer steps."""
        if self.mode != "scratch":
            return self.trial_epochs
        return epochs_reaching(self.min_steps, self.trial_epochs, train_images, self.batch_size)

    @property
    def trial_epochs(self) -> int:
        """Epochs one candidate trains for in this mode (0: evaluated as inherited)."""
        return {"scratch": self.epochs, "inherit": self.finetune_epochs, "inherit_zero_shot": 0}[self.mode]

    @field_validator("loss_weights")
    @classmethod
    def _known_losses(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown losses {unknown}; allowed values are {sorted(LOSSES)}")
        if any(weight < 0 for weight in value.values()):
            raise ValueError("loss weights must be >= 0")
        if not any(value.values()):
            raise ValueError(f"at least one loss weight must be > 0 (losses: {sorted(LOSSES)})")
        return value

    @field_validator("loss_parameters")
    @classmethod
    def _loss_parameters_fit(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        if not value:
            return value
        from workers.training.losses import loss_parameter_problems  # the classes say what they take

        # The error is shown after "training.loss_parameters: " already; a problem of one parameter names it further.
        problems = [problem.removeprefix("training.loss_parameters: ") for problem in loss_parameter_problems(value)]
        if problems:
            raise ValueError("; ".join(problems))
        return value


class SupernetConfig(_Section):
    checkpoint: str | None = Field(
        None, description="supernet weights written by `cmpnas supernet train` and read by the inherit modes; "
                          "default: OUTPUT_DIR/supernet.safetensors"
    )
    epochs: PositiveInt = Field(6, description="training epochs of the supernet")
    batch_size: PositiveInt = Field(128, description="batch size of that training")
    lr: PositiveFloat = Field(3e-3, description="its peak learning rate (AdamW, warm-up, cosine decay)")
    weight_decay: float = Field(0.05, ge=0, description="its AdamW weight decay")
    num_random_subnets: int = Field(2, ge=0, description="random subnets per step, besides the largest and smallest")
    distillation: bool = Field(True, description="in-place distillation from the largest subnet")
    distillation_weight: float = Field(1.0, ge=0, description="weight of the distillation term when it is on")
    calibration_images: PositiveInt = Field(2000, description="training images to recalibrate batch norm of a subnet")
    cpus: PositiveFloat = Field(1, description="CPUs of the supernet training task (also its torch threads)")
    gpus: float = Field(0, ge=0, le=1, description="GPUs of the supernet training task (0 or 1)")


class EvolutionConfig(_Section):
    population_size: PositiveInt = Field(4, description="random candidates before evolution starts; the population kept")
    sample_size: PositiveInt = Field(2, description="tournament size when choosing a parent; <= population_size")
    mutation_probability: float = Field(0.2, gt=0, le=1, description="per-gene resampling probability")
    crossover_probability: float = Field(0.5, ge=0, le=1, description="probability that a child crosses its parent "
                                                                       "with a second tournament winner")

    @model_validator(mode="after")
    def _sample_fits(self) -> EvolutionConfig:
        if self.sample_size > self.population_size:
            raise ValueError("sample_size must be <= population_size")
        return self


class EvaluationConfig(_Section):
    task: Annotated[str, registered_in(TASKS)] = Field(
        "retrieval", description="a registered evaluation task; retrieval: R@1, R@5, mAP; verification: those plus "
                                 "TAR@FAR 1e-2/1e-3 and rank-1"
    )
    held_out: Literal["split", "leave_one_out"] = Field(
        "split", description="split: queries against the disjoint gallery split; leave_one_out: the query and gallery "
                             "splits pooled, every image a query against all the others (its own image left out): "
                             "every image scored as a query, no partition chosen (docs/metrics.md)"
    )
    compatibility_ratio: float = Field(
        DEFAULT_SCORING.compatibility_ratio, ge=0, le=1,
        description="a trial fails the compatibility check when its final cross-model metric is below this fraction "
                    "of its homogeneous one (search.metric's cross_ vs homo_)"
    )
    paragon_ratio: float = Field(
        DEFAULT_SCORING.paragon_ratio, ge=0, le=1,
        description="a trial also fails when its final cross-model metric is below this fraction of the gallery "
                    "model's own (the paragon, on the same split); 0: off")
    chance_margin: float | None = Field(
        DEFAULT_SCORING.chance_margin, ge=0, lt=1,
        description="a trial also fails when its final cross-model metric is within this fraction of the way from "
                    "chance (a random ranking's score on the split) to 100, e.g. R@1 below 19 with 10 balanced "
                    "classes; for R@1, R@5 and mAP; null: off")
    agreement_k: PositiveInt | None = Field(
        None, description="trials also report the label-free cross_agreement and homo_agreement: the share of the "
                          "gallery model's own k nearest neighbours of each validation image among the query "
                          "model's, in percent; search.metric: cross_agreement ranks on it. null: off")


class Nsga2Config(_Section):
    """Optuna's NSGAIISampler settings (two objectives: search.metric up, MFLOPs down)."""

    population_size: PositiveInt = Field(4, ge=2, description="trials per generation")
    mutation_probability: float | None = Field(None, gt=0, le=1, description="per-gene; null: 1 / number of genes")
    crossover_probability: float = Field(0.9, ge=0, le=1, description="probability that a child is a crossover")
    swapping_probability: float = Field(0.5, ge=0, le=1, description="uniform crossover: per-gene swap probability")


class OptunaConfig(_Section):
    """The Optuna study of strategies nsga2 and optuna (orchestrator.strategies.optuna_search)."""

    sampler: str = Field("TPESampler", description="strategy optuna: a class of optuna.samplers, e.g. TPESampler, "
                                                   "RandomSampler, QMCSampler, GPSampler, NSGAIIISampler")
    sampler_options: dict[str, Any] = Field(
        default_factory=dict, description="strategy optuna: keyword arguments of the sampler; seed defaults to "
                                          "search.seed where the sampler takes one")
    initial_trials: NonNegativeInt = Field(
        10, description="strategy optuna, under a FLOPs budget: the first trials are this many uniform draws within "
                        "it, in place of the sampler's own random start over the whole space (TPESampler's "
                        "n_startup_trials is 10)")
    storage: str | None = Field(
        None, description="strategies nsga2 and optuna: an Optuna RDB storage URL (e.g. sqlite:///optuna.db) to keep "
                          "the study in, where optuna-dashboard shows it; credentials belong in the environment; "
                          "null: in memory")
    study_name: str | None = Field(None, description="the study's name in that storage; null: cmpnas-search-<first 8 "
                                                     "characters of the parent run id>")


class AshaConfig(_Section):
    """Ray Tune's ASHAScheduler on the per-epoch search.metric (time attribute: epoch)."""

    grace_period: PositiveInt = Field(1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2, gt=1, description="keep the top 1/reduction_factor at each rung")


class PredictorConfig(_Section):
    """Accuracy predictor that pre-screens proposals (ridge regression on one-hot genes)."""

    enabled: bool = Field(False, description="screen proposals with it; strategy nsga2 proposes without it")
    candidates_per_proposal: PositiveInt = Field(8, description="proposals screened; the best predicted is tried")
    min_observations: PositiveInt = Field(4, ge=2, description="evaluated candidates before screening starts")
    l2: PositiveFloat = Field(1.0, description="ridge penalty")


class FinalTrainingConfig(_Section):
    epochs: NonNegativeInt = Field(
        0, description="final training: after the front is recorded, every front candidate is trained again from "
                       "its starting weights (random in mode scratch, the supernet's slice in the inherit modes) for "
                       "this many epochs, a longer schedule than training.epochs, each as its own child run beside "
                       "the as-searched one; 0: off")


class SearchConfig(_Section):
    strategy: Annotated[str, registered_in(STRATEGIES)] = Field("evolution", description="a registered search strategy")
    metric: str = Field(DEFAULT_SCORING.metric, description="the cross-model metric the search maximises; one the "
                                                            "trials of evaluation.task report")
    num_candidates: PositiveInt = Field(8, description="trials: candidates proposed, trained and evaluated")
    max_concurrent: PositiveInt = Field(2, description="trials running at once")
    seed: int = Field(0, description="seed of the strategy's proposals and of candidate training")
    max_mflops: PositiveFloat | None = Field(None, description="FLOPs constraint on proposed candidates (fvcore "
                                                               "MFLOPs); null: none, or the largest of budgets_mflops")
    budgets_mflops: list[PositiveFloat] | None = Field(
        None, description="budget sweep: the best candidate for each FLOPs budget (fvcore MFLOPs)"
    )
    max_latency_ms: PositiveFloat | None = Field(
        None, description="latency constraint on proposed candidates: each is timed on its ONNX export in ONNX "
                          "Runtime (batch 1, one thread) on the driver's CPU before it becomes a trial, and refused "
                          "above this many milliseconds; run the driver on the deployment's CPU. null: none")
    scheduler: Literal["fifo", "asha"] = Field("fifo", description="asha: stop weak trials early on the per-epoch "
                                                                    "search.metric")
    evolution: EvolutionConfig = EvolutionConfig()
    nsga2: Nsga2Config = Nsga2Config()
    asha: AshaConfig = AshaConfig()
    predictor: PredictorConfig = PredictorConfig()
    optuna: OptunaConfig = OptunaConfig()
    final_training: FinalTrainingConfig = FinalTrainingConfig()

    @field_validator("budgets_mflops")
    @classmethod
    def _distinct_budgets(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one budget, or null for no budget sweep")
        if len(set(value)) != len(value):
            raise ValueError("budgets must be distinct")
        return sorted(value)

    @model_validator(mode="after")
    def _budgets_fit_the_limit(self) -> SearchConfig:
        # Whether the strategy can use predictor.enabled needs its class: orchestrator.strategies.feasibility.
        if self.budgets_mflops and self.max_mflops is not None and max(self.budgets_mflops) > self.max_mflops:
            raise ValueError(f"budgets_mflops {self.budgets_mflops} exceed max_mflops={self.max_mflops}: "
                             "raise max_mflops, drop it (the largest budget then bounds proposals) or lower the budgets")
        return self

    @property
    def proposal_limit_mflops(self) -> float | None:
        """FLOPs bound of every proposal: max_mflops, else the largest budget of a sweep."""
        if self.max_mflops is not None:
            return self.max_mflops
        return max(self.budgets_mflops) if self.budgets_mflops else None


class ResourcesConfig(_Section):
    cpus_per_trial: PositiveFloat = Field(1, description="CPUs Ray reserves for a trial (its torch threads: rounded "
                                                         "up)")
    gpus_per_trial: float = Field(0, ge=0, description="fractions pack several trials on one GPU")
    max_failures: int = Field(1, ge=0, description="retries of a failed trial")
    measure_latency: bool = Field(True, description="measure each finished candidate's latency, and the paragon's, "
                                                    "on their ONNX export in ONNX Runtime on the CPU (median of 300 "
                                                    "runs after 50, batch 1, one thread; docs/metrics.md)")


class TrackingConfig(_Section):
    uri: str | None = Field(
        None, description="MLflow tracking URI; null: MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db"
    )
    experiment: str = Field("cmpnas-quickstart", min_length=1, description="MLflow experiment of the search's runs")
    run_name: str | None = Field(None, description="name of the search's parent run; null: search-<date>-<time>")
    outage_wait_s: float = Field(
        60, ge=0, description="at the end of a search, how long to wait for an unreachable tracking server before "
                              "leaving the journaled records to `cmpnas sync`"
    )


class ExportConfig(_Section):
    registered_model_name: str = Field("cmpnas-query", min_length=1, description="MLflow Model Registry name")
    output_dir: str | None = Field(None, description="where packages go; null: OUTPUT_DIR/export")


class RayConfig(_Section):
    address: str | None = Field(None, description="null starts a local Ray; 'auto', HOST:PORT (a `ray start` head) "
                                "or ray://host:port joins a cluster")
    num_cpus: PositiveInt | None = Field(None, description="CPUs of the local Ray instance; default: all")
    storage_path: str | None = Field(
        None, description="Tune results and checkpoints: a folder every node sees, or a URI (s3://, gs://); "
                          "null: OUTPUT_DIR/ray_results"
    )
    ship_code: bool = Field(True, description="send cmpnas's packages to a joined cluster in the runtime environment")

    @field_validator("storage_path")
    @classmethod
    def _no_credentials_in_storage(cls, value: str | None) -> str | None:
        # Tune writes its storage path into the experiment's files (tuner.pkl, experiment state) in the
        # storage and on the nodes: credentials there would be on disk. The environment holds them instead.
        if value is not None and redact_uri(value) != value:
            raise ValueError("ray.storage_path holds credentials (user-info or a secret query parameter), which Tune "
                             "would write into its experiment files; remove them from the URI and give them "
                             "through the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                             "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*), where pyarrow and fsspec read them")
        return value


class CmpnasConfig(_Section):
    data: DataConfig = DataConfig()
    gallery: GalleryConfig = GalleryConfig()
    search_space: SearchSpaceConfig = SearchSpaceConfig()
    training: TrainingConfig = TrainingConfig()
    supernet: SupernetConfig = SupernetConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()
    export: ExportConfig = ExportConfig()
    output_dir: str = Field("outputs/quickstart", min_length=1, description="OUTPUT_DIR: the search's state, "
                            "checkpoints, Pareto table and plot, and by default Ray results and exports")

    @model_validator(mode="after")
    def _final_training_is_longer(self) -> CmpnasConfig:
        final = self.search.final_training.epochs
        if final and final <= self.training.trial_epochs:
            raise ValueError(f"search.final_training.epochs={final} must be more than the {self.training.trial_epochs} "
                             "epochs a trial trains (training.epochs; training.finetune_epochs in the inherit modes): "
                             "final training is the longer schedule; raise it, or set 0 to turn it off")
        return self

    @model_validator(mode="after")
    def _early_stopping_has_a_validation_split(self) -> CmpnasConfig:
        if self.gallery.patience is not None and self.data.validation_size == 0 and not self.data.validation_classes:
            raise ValueError(f"gallery.patience={self.gallery.patience} stops the gallery model's training on the "
                             "validation split, and data.validation_size is 0; set data.validation_size (e.g. 2000), "
                             "or unset gallery.patience")
        return self

    @model_validator(mode="after")
    def _pool_has_a_label_free_loss(self) -> CmpnasConfig:
        if not self.data.unlabelled.classes or self.training.unlabelled_weight == 0:
            return self
        weights = self.training.loss_weights
        if not any(weight > 0 and not LOSSES[name].uses_labels for name, weight in weights.items()):
            raise ValueError(f"data.unlabelled trains only through the label-free losses, and training.loss_weights "
                             f"{dict(weights)} gives none of them a weight; give cosine_alignment, l2_regression or "
                             "relational a weight > 0, or unset data.unlabelled")
        return self

    @model_validator(mode="after")
    def _asha_can_stop_something(self) -> CmpnasConfig:
        if self.search.scheduler == "asha" and self.search.asha.grace_period >= self.training.epochs:
            raise ValueError(f"search.asha.grace_period={self.search.asha.grace_period} must be below "
                             f"training.epochs={self.training.epochs} for ASHA to stop any trial early")
        return self

    def recorded_tree(self) -> dict[str, Any]:
        """The configuration as a search records it (MLflow params, ``config.json``): as JSON, without
        the gallery fields that do not apply to ``gallery.source`` (``trained_only_fields``)."""
        tree = self.model_dump(mode="json")
        tree["gallery"] = {name: tree["gallery"][name] for name in self.gallery.applicable_fields()}
        return tree

    @property
    def scoring(self) -> Scoring:
        """How candidates are scored and judged: search.metric and the evaluation's ratios (the references,
        the paragon's and chance's, come with the data: ``Scoring.with_references``)."""
        evaluation = self.evaluation
        return Scoring(self.search.metric, evaluation.compatibility_ratio, evaluation.paragon_ratio,
                       evaluation.chance_margin)

    @property
    def gallery_path(self) -> Path:
        """The gallery model's file or folder: gallery.path (or gallery.checkpoint), else the one cmpnas trains."""
        configured = self.gallery.configured_path
        return Path(configured) if configured else Path(self.output_dir) / "gallery.safetensors"

    @property
    def gallery_checkpoint_path(self) -> Path:
        """Where a gallery model cmpnas trains is saved (and found again): the same as ``gallery_path``."""
        return self.gallery_path

    @property
    def supernet_checkpoint_path(self) -> Path:
        return Path(self.supernet.checkpoint) if self.supernet.checkpoint else Path(self.output_dir) / "supernet.safetensors"

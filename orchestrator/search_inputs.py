"""What every job against a frozen gallery model sets up first: output folder, data, gallery, space.

A search and a supernet training both need, in this order:
1. the output folder, checked writable before any work (``prepare_output_dir``);
2. the data, decoded once (``load_data``): a file collection into the shard cache, read by batch
   (``data.streaming``), with its bad files counted and skipped; with ``data.validation_size``,
   split into the selection view and the held-out query/gallery splits (``load_search_data``,
   rules in ``workers.datasets.validation``): the job trains, early-stops and selects on the
   former, and only reports the latter;
3. the frozen gallery model from its source (``gallery.source``): a checkpoint checked against
   the data, one trained and saved on first use, or the team's own model or embeddings
   (``orchestrator.gallery_setup.obtain_gallery``);
4. the search space, sized by the gallery's embedding dimension and the data's channels;
5. the gallery model's embeddings of the train, query and gallery splits (and of the held-out
   query and gallery splits, when there is a validation split), computed once per job
   (``SearchInputs.embed_gallery``): on Ray Data for a streamed collection when Ray is connected
   (``orchestrator.gallery_pass``), else in this process; after it the gallery model is moved back to the CPU, so it
   holds no accelerator memory while trials run.

Step 5 is separate so that a job can check what depends on steps 1-4 (a supernet's fit) before
spending the embedding pass.

Two refusals come before step 2, so that a mismatch costs seconds, not a decoding pass:

- the search space must fit ``data.image_size`` (``check_space_fits_images``: within the space's
  declared ``image_sizes``);
- colour images are never turned gray unasked: a file collection (``PHOTO_SOURCES``) whose config
  does not set ``data.channels`` is loaded with ``channels=None`` (``requested_channels``), and
  the loader refuses it when its images are in colour (``workers.datasets.image_folder``); a gray
  collection loads as 1 channel, as before. Neither applies to a resumed search
  (``prepare_search_inputs(resumed=True)``), which keeps the channels and space it ran with.

Augmentation (``training.augmentation.enabled``): ``auto`` turns it on for photo collections
(``PHOTO_SOURCES``) of at least ``AUGMENT_FROM_SIZE`` px (a crop of a 28 px thumbnail loses what
tells it apart) unless the gallery is precomputed embeddings, which cannot follow a crop (``on``
with them is refused by the config check). When on, trials open the gallery model
themselves (``SearchInputs.gallery_loader``) to embed each augmented view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from orchestrator.config import CmpnasConfig, ConfigError
from orchestrator.gallery_pass import RayDataGalleryPass
from orchestrator.gallery_setup import gallery_request, obtain_gallery
from search_space import SearchSpace, create_space, list_spaces
from workers.datasets import DataRequest, RetrievalData, load_retrieval_data
from workers.datasets.validation import carve_validation
from workers.gallery_embeddings import GalleryEmbeddings, HeldOutSplits, compute_gallery_embeddings, embed_held_out
from workers.gallery_sources import GalleryLoader, GalleryModel, GallerySourceError
from workers.preprocess import pick_device
from workers.training_batches import AugmentationSettings

# Collections of the team's own photos; the built-in sets (28 px clothes, small faces) train unaugmented.
PHOTO_SOURCES = ("image_folder", "manifest")
AUGMENT_FROM_SIZE = 64
# Sources whose embeddings were computed elsewhere, on whole images: no augmented view can be embedded.
PRECOMPUTED_GALLERY_SOURCES = ("embeddings",)
# Streamed collections at least this large are embedded by Ray Data actors (see SearchInputs._ray_data_pass).
RAY_DATA_PASS_FROM = 20_000

Log = Callable[[str], None]


class OutputDirError(RuntimeError):
    """The output directory cannot be created or written."""


def prepare_output_dir(config: CmpnasConfig) -> Path:
    folder = Path(config.output_dir).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".cmpnas-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise OutputDirError(f"output_dir={config.output_dir!r} is not writable ({error}); choose another folder") from error
    return folder


def load_data(config: CmpnasConfig) -> RetrievalData:
    data = config.data
    request = DataRequest(root=data.root, download=data.download, train_size=data.train_size,
                          query_size=data.query_size, gallery_size=data.gallery_size, seed=data.seed,
                          image_size=data.image_size, channels=requested_channels(config), protocol=data.protocol,
                          train_classes=data.train_classes, max_bad_fraction=data.max_bad_fraction,
                          streaming={"auto": None, "on": True, "off": False}[data.streaming],
                          cache_dir=data.cache_dir, decode_workers=data.decode_workers)
    return load_retrieval_data(data.source, request)


@dataclass(frozen=True)
class SearchData:
    """The data of a job. ``selection`` is what it trains, early-stops and ranks on; ``held_out``
    holds the query/gallery splits that are only reported. Without a validation split
    (``data.validation_size`` 0) ``held_out`` is None and selection uses query/gallery itself."""

    selection: RetrievalData
    held_out: RetrievalData | None = None

    @property
    def reported(self) -> RetrievalData:
        """The data whose query/gallery splits are reported on: held out when there is a validation split."""
        return self.held_out or self.selection


def load_search_data(config: CmpnasConfig) -> SearchData:
    """``load_data``, then the validation split carved from train when ``data.validation_size`` is set."""
    data = load_data(config)
    if not config.data.validation_size:
        return SearchData(data)
    return SearchData(carve_validation(data, config.data.validation_size, config.data.seed), held_out=data)


def requested_channels(config: CmpnasConfig) -> int | None:
    """``data.channels`` as the loader is asked for it: None for a file collection whose config does not
    set it (the loader then takes 1 for gray images and refuses colour ones), else the value."""
    data = config.data
    if data.source in PHOTO_SOURCES and "channels" not in data.model_fields_set:
        return None
    return data.channels


def check_space_fits_images(config: CmpnasConfig) -> None:
    """Refuse a search space whose declared ``image_sizes`` exclude ``data.image_size``, naming the
    spaces that fit (``search_space.spaces``: the rule and each space's range)."""
    name, size = config.search_space.name, config.data.image_size
    space = _space_for_check(name)
    if space is None or space.fits_image_size(size):
        return
    low, high = space.image_sizes
    ranges = {other: candidate.image_sizes for other in list_spaces()
              if (candidate := _space_for_check(other)) is not None and candidate.image_sizes is not None}
    fitting = [other for other, (other_low, other_high) in ranges.items() if other_low <= size <= other_high]
    resolutions = f"{min(space.resolutions)}-{max(space.resolutions)} px"
    why = (f"every candidate would enlarge the images to {resolutions}" if size < low else
           f"every candidate would shrink them to {resolutions}, losing most of their pixels")
    declared = ", ".join(f"{other} {other_low}-{other_high} px" for other, (other_low, other_high) in ranges.items())
    other_space = (f"set search_space.name to a space that fits {size} px ({', '.join(fitting)}), or "
                   if fitting else f"no space fits {size} px: ")
    raise ConfigError(
        f"search_space.name={name!r} is for images of {low}-{high} px, but data.image_size={size}: {why}. "
        f"{other_space[0].upper()}{other_space[1:]}set data.image_size within {low}-{high} (file collections "
        f"and ORL faces are resized to it). Declared ranges: {declared} (docs/howto/own-data.md)"
    )


def _space_for_check(name: str) -> SearchSpace | None:
    try:
        return create_space(name, embed_dim=8, in_chans=1)
    except Exception:  # noqa: BLE001 - a plugin space that cannot be built this way is not checked here
        return None


def resolve_augmentation(config: CmpnasConfig) -> AugmentationSettings | None:
    """The training augmentation of this job, or None (see the module's rule for ``auto``)."""
    settings = config.training.augmentation
    enabled = settings.enabled == "on" or (
        settings.enabled == "auto" and config.data.source in PHOTO_SOURCES
        and config.data.image_size >= AUGMENT_FROM_SIZE and config.gallery.source not in PRECOMPUTED_GALLERY_SOURCES)
    if not enabled:
        return None
    return AugmentationSettings(tuple(settings.crop_scale), tuple(settings.crop_ratio), settings.horizontal_flip)


@dataclass
class SearchInputs:
    """Data, frozen gallery model and search space of one job; the gallery embeddings once computed."""

    data: RetrievalData
    gallery_model: GalleryModel
    space: SearchSpace
    device: torch.device
    # Seconds per set-up stage, logged on the parent run as ``stage_*_seconds``.
    timings: dict[str, float] = field(default_factory=dict)
    embeddings: GalleryEmbeddings | None = None
    # gallery.classifier: the BCT classifier built with the embeddings.
    classifier: str = "auto"
    augmentation: AugmentationSettings | None = None
    # How a trial opens its own copy of the gallery model (for augmented views).
    gallery_loader: GalleryLoader | None = None
    # The query/gallery splits only reported, when ``data`` is a selection view (``SearchData``).
    held_out_data: RetrievalData | None = None
    held_out: HeldOutSplits | None = None

    def embed_gallery(self, log: Log) -> GalleryEmbeddings:
        """The gallery model's embeddings of every split (the held-out ones included), computed on the
        first call only."""
        if self.embeddings is None:
            split_embedder = self._ray_data_pass()
            self.embeddings = compute_gallery_embeddings(self.gallery_model, self.data, self.device, self.classifier,
                                                         split_embedder=split_embedder)
            seconds = self.embeddings.seconds
            if self.held_out_data is not None:
                started = time.perf_counter()
                self.held_out = embed_held_out(self.gallery_model, self.held_out_data, self.device,
                                               split_embedder=split_embedder)
                seconds += time.perf_counter() - started
            self.gallery_model.release()
            self.timings["stage_gallery_embedding_seconds"] = seconds
            log(f"gallery model embedded {self.images_embedded} images once for the whole job ({seconds:.1f}s); "
                f"BCT classifier: {self.embeddings.classifier_kind}")
        return self.embeddings

    @property
    def images_embedded(self) -> int:
        """The gallery model's count of the images it embedded for this job, held-out splits included."""
        held_out = self.held_out.images_embedded if self.held_out is not None else 0
        return (self.embeddings.images_embedded if self.embeddings is not None else 0) + held_out

    def _ray_data_pass(self) -> RayDataGalleryPass | None:
        """Ray Data actors embed a streamed collection when Ray is connected and it pays: the cluster
        has GPUs this process lacks, more than one node, or ``RAY_DATA_PASS_FROM`` images or more
        (starting the actors costs 10-20 s). Otherwise, and for in-memory data and embeddings looked
        up by id, the splits are embedded here, by batch."""
        import ray

        if not (self.data.train.streamed and ray.is_initialized() and self.gallery_loader is not None
                and self.gallery_model.source not in PRECOMPUTED_GALLERY_SOURCES):
            return None
        total = len(self.data.train) + len(self.data.query) + len(self.data.gallery)
        if self.held_out_data is not None:
            total += len(self.held_out_data.query) + len(self.held_out_data.gallery)
        gpus_elsewhere = ray.cluster_resources().get("GPU", 0) >= 1 and self.device.type != "cuda"
        if not (gpus_elsewhere or len(ray.nodes()) > 1 or total >= RAY_DATA_PASS_FROM):
            return None
        return RayDataGalleryPass(self.gallery_loader, self.gallery_model.embed_dim, self.gallery_model.fingerprint)


def prepare_search_inputs(config: CmpnasConfig, log: Log, expected_gallery_fingerprint: str | None = None,
                          resumed: bool = False) -> SearchInputs:
    """Steps 2-4 of the module's order. ``expected_gallery_fingerprint``: the gallery a resumed
    search started with; any other is refused before the embedding pass. A ``resumed`` search runs
    as it was recorded: the two refusals are for new searches (its ``data.channels`` counts as
    chosen, and its space was accepted when it started), since a resume may not change either."""
    timings: dict[str, float] = {}
    if resumed:
        config = config.model_copy(update={"data": config.data.model_copy(update={"channels": config.data.channels})})
    else:
        check_space_fits_images(config)
    started = time.perf_counter()
    search_data = load_search_data(config)
    data = search_data.selection
    timings["stage_data_seconds"] = time.perf_counter() - started
    log(f"data: {data.summary()}")
    if search_data.held_out is not None:
        held_out = search_data.held_out
        log(f"validation split: {len(data.query)} query + {len(data.gallery)} gallery images carved from train "
            f"(data.validation_size), for selection; the {len(held_out.query)} query and {len(held_out.gallery)} "
            "gallery images are held out and only reported")
    if data.bad_files:
        shown = "; ".join(f"{item.id} ({item.reason})" for item in data.bad_files[:3])
        log(f"skipped {len(data.bad_files)} file(s) that could not be decoded (data.max_bad_fraction="
            f"{config.data.max_bad_fraction}): {shown}{' ...' if len(data.bad_files) > 3 else ''}")

    device = pick_device()
    started = time.perf_counter()
    gallery_model = obtain_gallery(config, data, device, log)
    timings["stage_gallery_model_seconds"] = time.perf_counter() - started
    if expected_gallery_fingerprint and gallery_model.fingerprint != expected_gallery_fingerprint:
        raise GallerySourceError(
            f"gallery model {config.gallery_path} (fingerprint {gallery_model.fingerprint[:12]}) is not the one this "
            f"search started with ({expected_gallery_fingerprint[:12]}): candidates trained against another gallery "
            "are not comparable. Restore that model (gallery.path, gallery.input) to resume"
        )
    space = create_space(config.search_space.name, embed_dim=gallery_model.embed_dim, in_chans=data.in_chans)
    augmentation = resolve_augmentation(config)
    if augmentation is not None:
        log(f"training augmentation: random resized crop (scale {augmentation.crop_scale}), horizontal flip "
            f"{'on' if augmentation.horizontal_flip else 'off'}; the gallery model embeds each augmented view")
    return SearchInputs(data, gallery_model, space, device, timings, classifier=config.gallery.classifier,
                        augmentation=augmentation, held_out_data=search_data.held_out,
                        gallery_loader=GalleryLoader(config.gallery.source,
                                                     gallery_request(config, data.in_chans, data.image_size)))

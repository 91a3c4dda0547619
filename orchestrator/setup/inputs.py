"""What every job against a frozen gallery model sets up first, and the embedding pass that ends it.

A search and a supernet training both need, in this order:
1. the output folder, checked writable before any work (``orchestrator.setup.output_dir``);
2. the data, decoded once, and with ``data.validation_size`` split into the selection view and the
   held-out query/gallery splits (``orchestrator.setup.data``);
3. the frozen gallery model from its source (``gallery.source``): a checkpoint checked against
   the data, one trained and saved on first use, or the team's own model or embeddings
   (``orchestrator.setup.gallery.obtain_gallery``);
4. the search space, sized by the gallery's embedding dimension and the data's channels;
5. the gallery model's embeddings of the train, query and gallery splits (and of the held-out
   query and gallery splits, when there is a validation split, and of the unlabelled pool,
   ``data.unlabelled``), computed once per job
   (``PreparedInputs.embed_gallery``): on Ray Data for a streamed collection when Ray is connected
   and it pays (``orchestrator.setup.gallery_pass``), else in this process; after it the gallery
   model is moved back to the CPU, so it holds no accelerator memory while trials run.

Steps 2-4 give ``PreparedInputs``; step 5 turns them into ``SearchInputs``. Both are frozen: what
exists before the embedding pass cannot be read after it as if it were complete, and nothing is
read before it exists. Step 5 is separate so that a job can check what depends on steps 1-4 (a
supernet's fit, the paragon's cost) before spending the embedding pass, and can connect Ray first.

Two refusals come before step 2, so that a mismatch costs seconds, not a decoding pass: the space
must fit ``data.image_size``, and colour photos must say ``data.channels``
(``orchestrator.setup.data``). Neither applies to a resumed search (``prepare_search_inputs(resumed=True)``),
which keeps the channels and space it ran with.

Augmentation (``training.augmentation.enabled``): ``auto`` turns it on for photo collections
(``PHOTO_SOURCES``) of at least ``AUGMENT_FROM_SIZE`` px (a crop of a 28 px thumbnail loses what
tells it apart) unless the gallery is precomputed embeddings, which cannot follow a crop (``on``
with them is refused by the config check). When on, trials open the gallery model
themselves (``PreparedInputs.gallery_loader``) to embed each augmented view.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import torch

from orchestrator.config import CmpnasConfig
from orchestrator.setup.data import PHOTO_SOURCES, check_space_fits_images, load_search_data
from orchestrator.setup.gallery import gallery_request, obtain_gallery
from orchestrator.setup.gallery_pass import RayDataGalleryPass
from search_space import SearchSpace, create_space
from workers.datasets import RetrievalData
from workers.gallery.embeddings import (
    COLLAPSED_COSINE,
    GalleryEmbeddings,
    HeldOutSplits,
    compute_gallery_embeddings,
    embed_held_out,
)
from workers.gallery.sources import GalleryLoader, GalleryModel, GallerySourceError
from workers.training.batches import AugmentationSettings
from workers.training.preprocess import pick_device

AUGMENT_FROM_SIZE = 64
# Sources whose embeddings were computed elsewhere, on whole images: no augmented view can be embedded.
PRECOMPUTED_GALLERY_SOURCES = ("embeddings",)
# Streamed collections at least this large are embedded by Ray Data actors (see PreparedInputs.ray_data_pass).
RAY_DATA_PASS_FROM = 20_000

Log = Callable[[str], None]


def resolve_augmentation(config: CmpnasConfig) -> AugmentationSettings | None:
    """The training augmentation of this job, or None (see the module's rule for ``auto``)."""
    settings = config.training.augmentation
    enabled = settings.enabled == "on" or (
        settings.enabled == "auto" and config.data.source in PHOTO_SOURCES
        and config.data.image_size >= AUGMENT_FROM_SIZE and config.gallery.source not in PRECOMPUTED_GALLERY_SOURCES)
    if not enabled:
        return None
    return AugmentationSettings(tuple(settings.crop_scale), tuple(settings.crop_ratio), settings.horizontal_flip)


@dataclass(frozen=True)
class PreparedInputs:
    """Data, frozen gallery model and search space of one job (steps 2-4 of the module's order)."""

    data: RetrievalData
    gallery_model: GalleryModel
    space: SearchSpace
    device: torch.device
    # How a trial or a Ray actor opens its own copy of the gallery model.
    gallery_loader: GalleryLoader
    # The query/gallery splits only reported, when ``data`` is a selection view (``SearchData``).
    held_out_data: RetrievalData | None = None
    augmentation: AugmentationSettings | None = None
    # gallery.classifier: the BCT classifier built with the embeddings.
    classifier: str = "auto"
    # Seconds per set-up stage, logged on the parent run as ``stage_*_seconds``.
    timings: Mapping[str, float] = field(default_factory=dict)

    def embed_gallery(self, log: Log) -> SearchInputs:
        """Step 5: the gallery model's embeddings of every split (the held-out ones included), once."""
        split_embedder = self.ray_data_pass()
        embeddings = compute_gallery_embeddings(self.gallery_model, self.data, self.device, self.classifier,
                                                split_embedder=split_embedder)
        seconds, held_out = embeddings.seconds, None
        if self.held_out_data is not None:
            started = time.perf_counter()
            held_out = embed_held_out(self.gallery_model, self.held_out_data, self.device,
                                      split_embedder=split_embedder)
            seconds += time.perf_counter() - started
        self.gallery_model.release()
        inputs = SearchInputs(self, embeddings, held_out,
                              timings={**self.timings, "stage_gallery_embedding_seconds": seconds})
        log(f"gallery model embedded {inputs.images_embedded} images once for the whole job ({seconds:.1f}s); "
            f"BCT classifier: {embeddings.classifier_kind}")
        spread = embeddings.mean_pairwise_cosine()
        if spread > COLLAPSED_COSINE:
            log(f"WARNING: the gallery model embeds the training images in nearly one direction (mean cosine "
                f"{spread:.3f} between two images): candidates aligned to it learn little beyond that direction "
                "and may end at chance. A gallery model cmpnas trains needs more steps (gallery.epochs, "
                "gallery.min_steps); another source: check that it outputs centred embeddings (docs/metrics.md)")
        return inputs

    def ray_data_pass(self) -> RayDataGalleryPass | None:
        """Ray Data actors embed a streamed collection when Ray is connected and it pays: the cluster
        has GPUs this process lacks, more than one node, or ``RAY_DATA_PASS_FROM`` images or more
        (starting the actors costs 10-20 s). Otherwise, and for in-memory data and embeddings looked
        up by id, the splits are embedded here, by batch."""
        import ray

        if not (self.data.train.streamed and ray.is_initialized()
                and self.gallery_model.source not in PRECOMPUTED_GALLERY_SOURCES):
            return None
        total = len(self.data.train) + len(self.data.query) + len(self.data.gallery)
        total += sum(len(pool) for pool in (self.data.unlabelled, self.data.agreement) if pool is not None)
        if self.held_out_data is not None:
            total += len(self.held_out_data.query) + len(self.held_out_data.gallery)
        gpus_elsewhere = ray.cluster_resources().get("GPU", 0) >= 1 and self.device.type != "cuda"
        if not (gpus_elsewhere or len(ray.nodes()) > 1 or total >= RAY_DATA_PASS_FROM):
            return None
        return RayDataGalleryPass(self.gallery_loader, self.gallery_model.embed_dim, self.gallery_model.fingerprint)


@dataclass(frozen=True)
class SearchInputs:
    """A job's prepared inputs with the gallery model's embeddings of every split (step 5)."""

    prepared: PreparedInputs
    embeddings: GalleryEmbeddings
    # With a validation split: the held-out query/gallery splits and the gallery model's embeddings of both.
    held_out: HeldOutSplits | None
    timings: Mapping[str, float]

    @property
    def data(self) -> RetrievalData:
        return self.prepared.data

    @property
    def space(self) -> SearchSpace:
        return self.prepared.space

    @property
    def gallery_model(self) -> GalleryModel:
        return self.prepared.gallery_model

    @property
    def held_out_data(self) -> RetrievalData | None:
        return self.prepared.held_out_data

    @property
    def images_embedded(self) -> int:
        """The gallery model's count of the images it embedded for this job, held-out splits included."""
        return self.embeddings.images_embedded + (self.held_out.images_embedded if self.held_out is not None else 0)


def prepare_search_inputs(config: CmpnasConfig, log: Log, expected_gallery_fingerprint: str | None = None,
                          resumed: bool = False) -> PreparedInputs:
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
        reported = (f"the {len(held_out.query)} query and {len(held_out.gallery)} gallery images are"
                    if held_out.query is not held_out.gallery else
                    f"the {len(held_out.query)} query and gallery images, pooled (evaluation.held_out: leave_one_out: "
                    "each a query against all the others), are")
        carved = (f"of the classes {config.data.validation_classes}, taken out of train (data.validation_classes: "
                  "neither trained nor evaluated)" if config.data.validation_classes else
                  "carved from train (data.validation_size)")
        log(f"validation split: {len(data.query)} query + {len(data.gallery)} gallery images {carved}, for selection; "
            f"{reported} held out and only reported")
    if data.unlabelled is not None:
        log(f"unlabelled pool: {len(data.unlabelled)} images of {config.data.unlabelled.classes} (data.unlabelled), "
            "none of them a query or gallery image; they train only through the label-free losses")
    if data.agreement is not None:
        log(f"{len(data.agreement)} more pool images held back from training (data.unlabelled.agreement_size): "
            "trials measure the label-free agreement on them")
    if data.bad_files:
        shown = "; ".join(f"{item.id} ({item.reason})" for item in data.bad_files[:3])
        log(f"skipped {len(data.bad_files)} file(s) that could not be decoded (data.max_bad_fraction="
            f"{config.data.max_bad_fraction}): {shown}{' ...' if len(data.bad_files) > 3 else ''}")

    device = pick_device()
    started = time.perf_counter()
    gallery_model = obtain_gallery(config, data, device, log, expected_gallery_fingerprint)
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
    loader = GalleryLoader(config.gallery.source, gallery_request(config, data.in_chans, data.image_size))
    return PreparedInputs(data, gallery_model, space, device, loader, held_out_data=search_data.held_out,
                          augmentation=augmentation, classifier=config.gallery.classifier, timings=timings)

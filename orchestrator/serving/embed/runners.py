"""Where ``cmpnas gallery embed``'s shards are embedded: the shard plan, the gallery model's loader, the runners.

- **Where.** In this process, on the GPU when there is one (``LocalShardRunner``), or on a Ray
  cluster by Ray Data actors that each open the gallery model once (``RayShardRunner``; the
  gallery model's file and an image folder must be at the same path on every node). Either way
  this process writes each shard as it arrives, so an interruption loses at most the shards in flight.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from orchestrator.config import CmpnasConfig
from orchestrator.serving.embed.errors import GalleryEmbedError
from orchestrator.serving.embed.image_collections import ImageCollection
from orchestrator.setup.gallery import gallery_request
from orchestrator.setup.ray_cluster import ray_worker_reason
from workers.gallery.sources import GalleryLoader, GalleryModel
from workers.training.preprocess import pick_device

DEFAULT_BATCH_SIZE = 256


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


def plan_shards(count: int, shard_size: int) -> list[Shard]:
    return [Shard(index, start, min(start + shard_size, count))
            for index, start in enumerate(range(0, count, shard_size))]


def configured_gallery_loader(config: CmpnasConfig, data_channels: int, data_image_size: int) -> GalleryLoader:
    """The configured gallery model, which must exist: serving never trains one."""
    if config.gallery.source == "cmpnas" and not config.gallery_path.is_file():
        raise GalleryEmbedError(
            f"there is no gallery checkpoint at {config.gallery_path} (gallery.path) to embed with: train it with "
            "`cmpnas gallery train` or run `cmpnas search` (which trains it on first use) with this config first, or "
            "set gallery.source and gallery.path to the team's own model"
        )
    return GalleryLoader(config.gallery.source, gallery_request(config, data_channels, data_image_size))


class ShardRunner(Protocol):
    """Embeds shards of a collection somewhere, yielding each (shard, embeddings N x D) as it is done."""

    def embed_shards(self, collection: ImageCollection, shards: Sequence[Shard]
                     ) -> Iterator[tuple[Shard, np.ndarray]]: ...


@dataclass
class LocalShardRunner:
    """In this process, on ``device`` (default: the GPU when there is one); the next shard is read
    (decoded) in a background thread while this one is embedded."""

    gallery: GalleryModel
    device: torch.device | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    def embed_shards(self, collection: ImageCollection, shards: Sequence[Shard]) -> Iterator[tuple[Shard, np.ndarray]]:
        device = self.device or pick_device()
        spec = self.gallery.input_spec
        try:
            with ThreadPoolExecutor(max_workers=1) as reader:
                upcoming = reader.submit(collection.read, shards[0].start, shards[0].stop, spec) if shards else None
                for position, shard in enumerate(shards):
                    images = upcoming.result()
                    if position + 1 < len(shards):
                        following = shards[position + 1]
                        upcoming = reader.submit(collection.read, following.start, following.stop, spec)
                    ids = collection.ids[shard.start : shard.stop]
                    yield shard, self.gallery.embed(images, ids, device, self.batch_size)
        finally:
            self.gallery.release()


class ShardEmbedActor:
    """A Ray Data actor: opens the gallery model once, then embeds whole shards on its own device."""

    def __init__(self, loader: GalleryLoader, collection: ImageCollection, batch_size: int):
        self.gallery = loader.open()
        self.collection = collection
        self.batch_size = batch_size
        self.device = pick_device()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = []
        for start, stop in zip(batch["start"].tolist(), batch["stop"].tolist()):
            images = self.collection.read(start, stop, self.gallery.input_spec)
            embeddings = self.gallery.embed(images, self.collection.ids[start:stop], self.device, self.batch_size)
            # Bytes, not a tensor column: the last shard is shorter than the others.
            payloads.append(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
        return {"shard": batch["shard"], "fingerprint": np.array([self.gallery.fingerprint] * len(payloads)),
                "embeddings": np.array(payloads, dtype=object)}


@dataclass
class RayShardRunner:
    """Ray Data ``map_batches`` over a pool of ``ShardEmbedActor``, one shard per call, on the connected
    Ray cluster. ``actors`` default: one per GPU of the cluster, else one per ``cpus_per_actor`` CPUs;
    ``gpus_per_actor`` default: 1 where the cluster has GPUs, else 0."""

    loader: GalleryLoader
    expected_fingerprint: str
    batch_size: int = DEFAULT_BATCH_SIZE
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None

    def embed_shards(self, collection: ImageCollection, shards: Sequence[Shard]) -> Iterator[tuple[Shard, np.ndarray]]:
        import ray
        import ray.data

        if not shards:
            return
        resources = ray.cluster_resources()
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        actors = self.actors or (int(resources.get("GPU", 0)) if gpus else
                                 int(resources.get("CPU", 1) // self.cpus_per_actor))
        actors = max(1, min(actors, len(shards)))
        context = ray.data.DataContext.get_current()
        showed_bars, context.enable_progress_bars = context.enable_progress_bars, False  # ours is on screen
        by_index = {shard.index: shard for shard in shards}
        try:
            dataset = ray.data.from_items([{"shard": s.index, "start": s.start, "stop": s.stop} for s in shards])
            dataset = dataset.map_batches(
                ShardEmbedActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=self.cpus_per_actor, num_gpus=gpus,
                fn_constructor_kwargs={"loader": self.loader.expecting(self.expected_fingerprint),
                                       "collection": collection, "batch_size": self.batch_size},
            )
            for batch in _batches_or_worker_error(dataset, self.loader):
                for index, fingerprint, payload in zip(batch["shard"], batch["fingerprint"], batch["embeddings"]):
                    shard = by_index[int(index)]
                    if fingerprint != self.expected_fingerprint:
                        raise GalleryEmbedError(
                            f"a Ray worker opened gallery model {self.loader.request.path} with fingerprint "
                            f"{str(fingerprint)[:12]}, this process has {self.expected_fingerprint[:12]}: the nodes "
                            "hold different files at that path. Put the same gallery model on every node"
                        )
                    yield shard, np.frombuffer(payload, dtype=np.float32).reshape(len(shard), -1)
        finally:
            context.enable_progress_bars = showed_bars


def _batches_or_worker_error(dataset, loader: GalleryLoader) -> Iterator[dict[str, np.ndarray]]:
    """The dataset's output, one shard at a time; a worker's failure as a ``GalleryEmbedError`` with its reason."""
    import ray.exceptions

    try:
        yield from dataset.iter_batches(batch_size=1, batch_format="numpy")
    except ray.exceptions.RayError as error:
        raise GalleryEmbedError(
            f"a Ray worker failed: {ray_worker_reason(error)}. On a cluster the gallery model "
            f"({loader.request.path}) and an image folder must be at the same path on every node. Finished shards "
            "are kept: run again to resume"
        ) from None

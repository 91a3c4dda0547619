"""The search's gallery pass on Ray Data: every split of a streamed collection embedded once by
actors that each open the gallery model, on GPUs when the cluster has any.

Rules:
* the work is cut into index ranges of ``RANGE_SIZE`` images of one split; an actor reads its
  range from the shard cache (``ShardedImages``: on a node without the cache it is rebuilt there
  from the same files), embeds it and returns the rows; this process places each range's rows
  at their offsets, so ranges may finish in any order and only the embeddings (N x D) are held;
* actors: one per GPU when the cluster has GPUs (each with one GPU), else one per
  ``cpus_per_actor`` CPUs, never more than there are ranges;
* every actor's model must have the fingerprint this process loaded: a node holding another
  file at the gallery path is refused, as in ``cmpnas gallery embed``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from orchestrator.setup.ray_cluster import ray_worker_reason
from workers.datasets import ImageSet
from workers.gallery.sources import GalleryLoader, GallerySourceError
from workers.training.preprocess import pick_device

RANGE_SIZE = 4096
EMBED_BATCH_SIZE = 256


class RangeEmbedActor:
    """A Ray Data actor: opens the gallery model once, then embeds ranges of the splits it was given."""

    def __init__(self, loader: GalleryLoader, splits: dict[str, ImageSet]):
        self.gallery = loader.open()
        self.splits = splits
        self.device = pick_device()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = []
        for split, start, stop in zip(batch["split"].tolist(), batch["start"].tolist(), batch["stop"].tolist()):
            images = self.splits[split]
            ids = [str(image_id) for image_id in images.ids[start:stop]]
            embeddings = self.gallery.embed(images.images[start:stop], ids, self.device, EMBED_BATCH_SIZE)
            payloads.append(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
        return {"split": batch["split"], "start": batch["start"], "stop": batch["stop"],
                "fingerprint": np.array([self.gallery.fingerprint] * len(payloads)),
                "embeddings": np.array(payloads, dtype=object)}


class RayDataGalleryPass:
    """A ``SplitEmbedder`` (``workers.gallery.embeddings``) that runs on the connected Ray cluster."""

    def __init__(self, loader: GalleryLoader, embed_dim: int, fingerprint: str, cpus_per_actor: float = 1.0):
        self.loader, self.embed_dim, self.fingerprint = loader, embed_dim, fingerprint
        self.cpus_per_actor = cpus_per_actor

    def __call__(self, split: str, images: ImageSet) -> tuple[np.ndarray, int]:
        out = np.zeros((len(images), self.embed_dim), dtype=np.float32)
        covered = 0
        for start, stop, rows in self._ranges(split, images):
            out[start:stop] = rows
            covered += stop - start
        if covered != len(images):
            raise GallerySourceError(f"the gallery pass on Ray Data returned {covered} of the {len(images)} {split} "
                                     "embeddings; run again")
        return out, len(images)

    def _ranges(self, split: str, images: ImageSet) -> Iterator[tuple[int, int, np.ndarray]]:
        import ray
        import ray.data
        import ray.exceptions

        count = len(images)
        ranges = [{"split": split, "start": start, "stop": min(start + RANGE_SIZE, count)}
                  for start in range(0, count, RANGE_SIZE)]
        if not ranges:
            return
        resources = ray.cluster_resources()
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        actors = int(resources.get("GPU", 0)) if gpus else int(resources.get("CPU", 1) // self.cpus_per_actor)
        actors = max(1, min(actors, len(ranges)))
        context = ray.data.DataContext.get_current()
        showed_bars, context.enable_progress_bars = context.enable_progress_bars, False
        try:
            dataset = ray.data.from_items(ranges).map_batches(
                RangeEmbedActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=self.cpus_per_actor, num_gpus=gpus,
                fn_constructor_kwargs={"loader": self.loader.expecting(self.fingerprint), "splits": {split: images}},
            )
            for batch in dataset.iter_batches(batch_size=1, batch_format="numpy"):
                for start, stop, fingerprint, payload in zip(batch["start"], batch["stop"], batch["fingerprint"],
                                                             batch["embeddings"]):
                    if fingerprint != self.fingerprint:
                        raise GallerySourceError(
                            f"a Ray worker opened gallery model {self.loader.request.path} with fingerprint "
                            f"{str(fingerprint)[:12]}, this process has {self.fingerprint[:12]}: put the same gallery "
                            "model at that path on every node")
                    yield int(start), int(stop), np.frombuffer(payload, dtype=np.float32).reshape(
                        int(stop) - int(start), self.embed_dim)
        except ray.exceptions.RayError as error:
            raise GallerySourceError(
                f"the gallery pass failed on a Ray worker: {ray_worker_reason(error)}. On a "
                f"cluster the gallery model ({self.loader.request.path}) and the collection's files must be at the "
                "same path on every node"
            ) from None
        finally:
            context.enable_progress_bars = showed_bars

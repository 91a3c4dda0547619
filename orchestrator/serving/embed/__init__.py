"""Embedding an image collection with the gallery model into a folder that a search or a query service uses.

``cmpnas gallery embed`` (``embed_collection``) turns a *collection* into an embedded gallery folder
(see ``orchestrator.serving.index``): ``embeddings.npy`` and ``ids.txt`` (the files of
``gallery.source: embeddings``), ``index.faiss`` and ``gallery.json``. The rules, each in the module it is about:

- ``image_collections``: the collections (an image folder, or the configured data's splits) and their image ids.
- ``runners``: where shards are embedded (in this process, or on a Ray cluster).
- ``job``: the shards on disk, resume, the finished folder, and the command.
- ``errors``: ``GalleryEmbedError``, which every module raises.
"""

from orchestrator.serving.embed.errors import GalleryEmbedError
from orchestrator.serving.embed.image_collections import (
    SPLITS,
    ImageArrayCollection,
    ImageCollection,
    ImageFolderCollection,
    data_collection,
    folder_collection,
    list_image_files,
)
from orchestrator.serving.embed.job import (
    DEFAULT_SHARD_SIZE,
    LISTING_FILE,
    CHECKSUM_SUFFIX,
    LISTING_IDS_FILE,
    SHARDS_DIR,
    EmbeddedGalleryFolder,
    EmbedOptions,
    GalleryEmbedRequest,
    Log,
    embed_collection,
    embed_configured_gallery,
)
from orchestrator.serving.embed.runners import (
    DEFAULT_BATCH_SIZE,
    GalleryLoader,
    LocalShardRunner,
    RayShardRunner,
    Shard,
    ShardEmbedActor,
    ShardRunner,
    configured_gallery_loader,
    plan_shards,
)

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_SHARD_SIZE", "LISTING_FILE", "LISTING_IDS_FILE", "CHECKSUM_SUFFIX", "SHARDS_DIR",
    "SPLITS", "EmbedOptions", "EmbeddedGalleryFolder", "GalleryEmbedError", "GalleryEmbedRequest", "GalleryLoader",
    "ImageArrayCollection", "ImageCollection", "ImageFolderCollection", "LocalShardRunner", "Log", "RayShardRunner",
    "Shard", "ShardEmbedActor", "ShardRunner", "configured_gallery_loader", "data_collection", "embed_collection",
    "embed_configured_gallery", "folder_collection", "list_image_files", "plan_shards",
]

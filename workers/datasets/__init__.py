"""Data sources for searches: decoded once, split deterministically, held as uint8 arrays in memory
or as records of the shard cache read by batch (``shard_cache``)."""

from workers.datasets.errors import DataError
from workers.datasets.registry import list_sources, load_retrieval_data, register_source
from workers.datasets.splits import stratified_split
from workers.datasets.types import RETRIEVAL_SPLITS, DataRequest, ImageSet, RetrievalData

__all__ = [
    "RETRIEVAL_SPLITS",
    "DataError",
    "DataRequest",
    "ImageSet",
    "RetrievalData",
    "list_sources",
    "load_retrieval_data",
    "register_source",
    "stratified_split",
]

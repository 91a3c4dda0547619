"""Named data sources behind one factory, ``load_retrieval_data``.

A source turns a ``DataRequest`` into ``RetrievalData``. The built-in sources register themselves
in their own modules (``fashion_mnist``, ``image_folder``, ``orl_faces``); the rules of names and
errors are those of ``search_space.registry``, except that an unknown name raises ``DataError``
like every other problem with the data.
"""

from __future__ import annotations

from typing import Callable

from search_space.registry import Registry, UnknownNameError
from workers.datasets.types import DataError, DataRequest, RetrievalData

DataSource = Callable[[DataRequest], RetrievalData]
SOURCES: Registry[DataSource] = Registry(
    "data source", "data.source",
    builtin_modules=("workers.datasets.fashion_mnist", "workers.datasets.image_folder", "workers.datasets.orl_faces"),
)


def register_source(name: str) -> Callable[[DataSource], DataSource]:
    return SOURCES.register(name)


def list_sources() -> list[str]:
    return SOURCES.names()


def load_retrieval_data(source: str, request: DataRequest) -> RetrievalData:
    try:
        load = SOURCES[source]
    except UnknownNameError as error:
        raise DataError(str(error)) from None
    data = load(request)
    missing = sorted(set(data.query.labels.tolist()) - set(data.gallery.labels.tolist()))
    if missing:
        names = [data.class_names[label] for label in missing[:10]]
        raise DataError(f"classes {names} have query images but none in the gallery split: raise data.gallery_size "
                        "or drop classes with very few images")
    return data

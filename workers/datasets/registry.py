"""Named data sources behind one factory, ``load_retrieval_data``.

A source turns a ``DataRequest`` into ``RetrievalData``. The built-in sources are declared here by
name and register themselves in their own modules (``fashion_mnist``, ``image_folder``,
``manifest``, ``orl_faces``); the rules of names and errors are those of ``search_space.registry``,
except that an unknown name raises ``DataError`` like every other problem with the data.

Queries without a match: whatever the source, data whose query classes have no gallery image at
all is refused (nothing could be measured). When only some query classes lack gallery images, a
warning names them and counts their queries: the retrieval metrics leave those queries out
(``evaluators.retrieval``). Sources that draw the splits themselves refuse that case earlier
(``workers.datasets.splits.refuse_query_classes_without_gallery``: the sizes are too small); it
reaches this check from user-assigned splits (a manifest, split folders) and other sources.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from search_space.registry import Registry, UnknownNameError
from workers.datasets.errors import DataError
from workers.datasets.types import DataRequest, RetrievalData

logger = logging.getLogger(__name__)

DataSource = Callable[[DataRequest], RetrievalData]
SOURCES: Registry[DataSource] = Registry(
    "data source", "data.source",
    builtins={"fashion_mnist": "workers.datasets.fashion_mnist", "image_folder": "workers.datasets.image_folder",
              "manifest": "workers.datasets.manifest", "orl_faces": "workers.datasets.orl_faces"},
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
    check_queries_have_matches(data)
    return data


def check_queries_have_matches(data: RetrievalData) -> None:
    """Refuse data where no query class is in the gallery split; warn where some are not (module rules)."""
    gallery_classes = np.unique(data.gallery.labels)
    unmatched = ~np.isin(data.query.labels, gallery_classes)
    if not unmatched.any():
        return
    classes = np.unique(data.query.labels[unmatched]).tolist()
    names = [data.class_names[label] for label in classes[:10]]
    more = " ..." if len(classes) > 10 else ""
    if unmatched.all():
        raise DataError(f"no query class of {data.name} has an image in the gallery split (query classes "
                        f"{names}{more}), so retrieval cannot be measured: put images of the query classes in the "
                        "gallery split")
    logger.warning("%d of the %d queries of %s belong to %d class(es) without gallery images: %s%s; retrieval metrics "
                   "leave those queries out (queries_without_match)", int(unmatched.sum()), len(unmatched), data.name,
                   len(classes), names, more)

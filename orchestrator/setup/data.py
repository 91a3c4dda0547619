"""The data of a job: loaded from its source, decoded once, and split for selection and reporting.

Rules:
* ``load_data`` builds the ``DataRequest`` of ``data.*`` and loads it from ``data.source`` (a file
  collection into the shard cache, read by batch with ``data.streaming``), its bad files counted
  and skipped;
* with ``data.validation_size``, ``load_search_data`` carves the validation split from train
  (``workers.datasets.validation``; at most a quarter of it, ``validation_images``): a job
  trains, early-stops and selects on that view (``SearchData.selection``) and only reports the
  held-out query/gallery splits (``SearchData.held_out``); with ``data.validation_classes`` the
  validation split is those classes' images instead, taken out of train (class-disjoint validation);
* the unlabelled pool (``data.unlabelled``) is checked against every query and gallery split, the
  validation halves and the held-out ones: an image of them in the pool is refused
  (``workers.datasets.unlabelled.refuse_evaluated_overlap``); then ``data.unlabelled.agreement_size``
  of its images are held back from training for the label-free agreement (selection view only);
* colour images are never turned gray unasked: a file collection (``PHOTO_SOURCES``) whose config
  does not set ``data.channels`` is loaded with ``channels=None`` (``requested_channels``), and
  the loader refuses it when its images are in colour (``workers.datasets.image_folder``); a gray
  collection loads as 1 channel;
* the search space must fit ``data.image_size`` (``check_space_fits_images``: within the space's
  declared ``image_sizes``), checked before the data is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from orchestrator.config import CmpnasConfig, ConfigError
from search_space import SearchSpace, create_space, list_spaces
from workers.datasets import DataRequest, ImageSet, RetrievalData, load_retrieval_data
from workers.datasets.leave_one_out import pooled_for_leave_one_out
from workers.datasets.unlabelled import hold_back_for_agreement, refuse_evaluated_overlap
from workers.datasets.validation import carve_class_validation, carve_validation, validation_images

# Collections of the team's own photos; the built-in sets (28 px clothes, small faces) train unaugmented.
PHOTO_SOURCES = ("image_folder", "manifest")


def load_data(config: CmpnasConfig) -> RetrievalData:
    data = config.data
    request = DataRequest(root=data.root, download=data.download, train_size=data.train_size,
                          query_size=data.query_size, gallery_size=data.gallery_size, seed=data.seed,
                          image_size=data.image_size, channels=requested_channels(config), protocol=data.protocol,
                          train_classes=data.train_classes, max_bad_fraction=data.max_bad_fraction,
                          streaming={"auto": None, "on": True, "off": False}[data.streaming],
                          cache_dir=data.cache_dir, decode_workers=data.decode_workers,
                          cache_trusted_group=data.cache_trusted_group,
                          allow_paths_outside_root=data.allow_paths_outside_root,
                          unlabelled_classes=tuple(data.unlabelled.classes), unlabelled_size=data.unlabelled.size,
                          unlabelled_evaluated=data.unlabelled.evaluate_classes)
    return load_retrieval_data(data.source, request)


@dataclass(frozen=True)
class SearchData:
    """The data of a job. ``selection`` is what it trains, early-stops and ranks on; ``held_out``
    holds the query/gallery splits that are only reported. Without a validation split
    (``data.validation_size`` 0) ``held_out`` is None and selection uses query/gallery itself."""

    selection: RetrievalData
    held_out: RetrievalData | None = None

    def evaluated_splits(self) -> dict[str, ImageSet]:
        """Every query and gallery split a candidate is ranked or reported on, by name: what the
        unlabelled pool may never hold (``workers.datasets.unlabelled``)."""
        views = {"": self.selection} if self.held_out is None else {"validation ": self.selection,
                                                                     "held-out ": self.held_out}
        return {f"{view}{split}": getattr(data, split) for view, data in views.items() for split in ("query", "gallery")}

    @property
    def reported(self) -> RetrievalData:
        """The data whose query/gallery splits are reported on: held out when there is a validation split."""
        return self.held_out or self.selection


def load_search_data(config: CmpnasConfig) -> SearchData:
    """``load_data`` (its query and gallery pooled for ``evaluation.held_out: leave_one_out``), then the
    validation split carved from train when ``data.validation_size`` or ``data.validation_classes`` is set."""
    data = load_data(config)
    if config.evaluation.held_out == "leave_one_out":
        data = pooled_for_leave_one_out(data)
    if config.data.validation_classes:
        search_data = SearchData(carve_class_validation(data, config.data.validation_classes,
                                                        config.data.validation_size, config.data.seed), held_out=data)
    elif not config.data.validation_size:
        search_data = SearchData(data)
    else:
        size = validation_images(config.data.validation_size, len(data.train), config.data.validation_max_fraction)
        search_data = SearchData(carve_validation(data, size, config.data.seed), held_out=data)
    refuse_evaluated_overlap(data.unlabelled, search_data.evaluated_splits())
    agreement_size = config.data.unlabelled.agreement_size
    if agreement_size:  # after the overlap check: the held-back images are pool images, never evaluated ones
        selection = hold_back_for_agreement(search_data.selection, agreement_size, config.data.seed)
        search_data = replace(search_data, selection=selection)
    return search_data


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

"""Which data an export and ``verify-compat`` measure on, and the proof that it is the searched data.

Rules:
* ``cmpnas export`` evaluates on the search's recorded configuration (the parent run's
  ``config.json``). ``--set`` may change only where that data is read from and how
  (``DATA_LOCATION_FIELDS``: ``data.root`` (a folder, or the manifest file of ``data.source:
  manifest``), ``data.cache_dir``, ``data.download``, ``data.streaming``, ``data.decode_workers``,
  ``data.cache_trusted_group``, ``data.allow_paths_outside_root``),
  applied over the recorded configuration; any other ``data.*`` field (source, sizes, seed,
  protocol, image size, ...) would change what is evaluated and is refused, naming the field.
  Outside ``data``, export takes ``tracking.*`` and ``export.*`` (where the search is, where the
  registry is) and refuses the rest, which it reads from the recorded configuration;
* the data's identity (``data_identity``): source, root (resolved, ``redact_uri``-ed), name,
  protocol, seed, split sizes, image size and channels, the split digests
  (``orchestrator.tracking.dataset_inputs.split_digest``: image shape, labels and ids of each split) and the
  ``data`` section of the configuration it was loaded with. An export records it in its
  manifest (``compatibility.json``, key ``data``). The splits are the search's dataset inputs
  (``orchestrator.tracking.dataset_inputs.named_splits``): with a validation split
  (``data.validation_size``) train is the train split less the validation images, the validation
  halves are named beside it, and query/gallery are the held-out splits the export measures on;
* export refuses data whose split digests differ from the ones the search recorded as its dataset
  inputs (``check_search_splits``), so a ``data.root`` override must hold the same images;
* ``verify-compat`` without ``--config`` reloads the data the manifest records (location
  overrides allowed, as above); with ``--config`` it measures on that config's data, which must
  match the recorded identity (``identity_differences``: source, query and gallery sizes and
  digests, image size, channels) unless ``--force``. An export made before manifests recorded
  their data cannot be checked: without ``--config`` it is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from orchestrator.common.credentials import redact_tree, redact_uri
from orchestrator.config import CmpnasConfig, ConfigError, apply_override, validate_config
from orchestrator.setup.data import SearchData
from orchestrator.tracking.dataset_inputs import named_splits, split_digest
from orchestrator.tracking.tags import DATASET_CONTEXT_TAG

# The data fields that say where the data is read from and how, never which images: the only
# data.* fields an export (or verify-compat on the recorded data) may override.
DATA_LOCATION_FIELDS = ("root", "cache_dir", "download", "streaming", "decode_workers", "cache_trusted_group",
                        "allow_paths_outside_root")
# Sections of an export's own configuration: where the search and the registry are.
EXPORT_OWN_SECTIONS = ("tracking", "export")
# What must be equal for two data sets to be evaluated alike (the train split is not evaluated).
COMPARED = ("source", "sizes.query", "sizes.gallery", "digests.query", "digests.gallery", "image_size", "channels")


def _field(assignment: str) -> str:
    return assignment.partition("=")[0].strip()


def data_location_overrides(overrides: Sequence[str], command: str) -> tuple[list[str], list[str]]:
    """(``data.*`` location overrides, every other override); a ``data.*`` override of a field
    outside ``DATA_LOCATION_FIELDS`` raises ``ConfigError`` naming it."""
    location, rest = [], []
    for assignment in overrides:
        field = _field(assignment)
        section, _, name = field.partition(".")
        if section != "data":
            rest.append(assignment)
        elif name in DATA_LOCATION_FIELDS:
            location.append(assignment)
        else:
            allowed = ", ".join(f"data.{name}" for name in DATA_LOCATION_FIELDS)
            raise ConfigError(f"--set {field}: {command} measures on the data the search recorded, and {field} would "
                              f"change what is evaluated; only where the data is read from may be overridden "
                              f"({allowed})")
    return location, rest


def export_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``cmpnas export``'s ``--set``: (data location overrides, over the recorded configuration;
    ``tracking.*``/``export.*`` overrides, of the command's own configuration). Refuses the rest."""
    location, rest = data_location_overrides(overrides, "cmpnas export")
    for assignment in rest:
        field = _field(assignment)
        if field.partition(".")[0] not in EXPORT_OWN_SECTIONS:
            hint = {"gallery": "; pass the gallery model with --gallery (a TorchScript one also needs "
                                "--allow-torchscript)", "output_dir": "; use --output"}.get(
                field.partition(".")[0], "")
            raise ConfigError(f"--set {field}: cmpnas export reads it from the search's recorded configuration; "
                              f"--set takes tracking.*, export.* and the data's location "
                              f"({', '.join('data.' + name for name in DATA_LOCATION_FIELDS)}){hint}")
    return location, rest


def apply_data_overrides(tree: dict[str, Any], overrides: Sequence[str], source: str) -> CmpnasConfig:
    """A recorded configuration tree with data location overrides applied, validated."""
    tree = {key: dict(value) if isinstance(value, dict) else value for key, value in tree.items()}
    for assignment in overrides:
        apply_override(tree, assignment)
    return validate_config(tree, source=source + (f" with {', '.join(overrides)}" if overrides else ""))


def recorded_data_config(config: CmpnasConfig, recorded: dict[str, Any], overrides: Sequence[str],
                         source: str) -> CmpnasConfig:
    """``config`` with its data section replaced by the recorded one (a manifest's ``data.config``),
    location overrides applied."""
    data = apply_data_overrides({"data": recorded}, overrides, source).data
    return config.model_copy(update={"data": data})


def _digest(images) -> str:
    shape = tuple(int(size) for size in images.images.shape[1:])
    return split_digest(shape, np.asarray(images.labels, dtype=np.int64), images.ids)


def _location(root: str | None) -> str | None:
    if not root:
        return None
    if "://" in root:
        return redact_uri(root)
    return str(Path(root).expanduser().resolve())


def data_identity(config: CmpnasConfig, search_data: SearchData) -> dict[str, Any]:
    """The identity of loaded data (the module's rules): what an export records and checks."""
    data = search_data.selection
    splits = named_splits(data, search_data.held_out)
    return {
        "source": config.data.source, "root": _location(config.data.root), "name": data.name,
        "protocol": data.protocol, "seed": config.data.seed,
        "sizes": {split: len(images) for split, images in splits},
        "image_size": data.image_size, "channels": data.in_chans,
        "digests": {split: _digest(images) for split, images in splits},
        "config": redact_tree(config.data.model_dump(mode="json")),
    }


def describe_data(identity: dict[str, Any]) -> str:
    """One line: source, root, split sizes (and seed, protocol)."""
    sizes = identity["sizes"]
    where = identity["root"] or "its standard place (no data.root)"
    validation = (f", validation {sizes['validation_query'] + sizes['validation_gallery']}, held out: query"
                  if "validation_query" in sizes else ", query")
    return (f"data: {identity['source']} at {where}; train {sizes['train']}{validation} {sizes['query']}, gallery "
            f"{sizes['gallery']} images (seed {identity['seed']}, {identity['protocol']}; query/gallery digests "
            f"{identity['digests']['query']}/{identity['digests']['gallery']})")


def _get(identity: dict[str, Any], dotted: str) -> Any:
    value: Any = identity
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def identity_differences(recorded: dict[str, Any], measured: dict[str, Any]) -> list[str]:
    """What differs between two identities among the fields that decide what is evaluated."""
    return [f"{name} was {_get(recorded, name)!r}, now {_get(measured, name)!r}" for name in COMPARED
            if _get(recorded, name) != _get(measured, name)]


def recorded_split_digests(search_run) -> dict[str, str]:
    """The split digests a search recorded as its parent run's dataset inputs, by context ({} for older
    searches)."""
    digests = {}
    for item in getattr(search_run.inputs, "dataset_inputs", None) or []:
        context = {tag.key: tag.value for tag in item.tags}.get(DATASET_CONTEXT_TAG)
        if context:
            digests[context] = item.dataset.digest
    return digests


def search_split_differences(search_run, identity: dict[str, Any]) -> list[str] | None:
    """The splits whose digest differs from the one the search recorded; None when it recorded none."""
    recorded = recorded_split_digests(search_run)
    if not recorded:
        return None
    return [f"{split} (recorded {digest}, now {identity['digests'][split]})" for split, digest in sorted(recorded.items())
            if identity["digests"].get(split) != digest]

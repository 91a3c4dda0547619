"""A configuration from YAML and ``--set`` overrides, validated into ``CmpnasConfig``, and its errors.

Rules:
* ``load_config()`` without a path reads the embedded default, ``DEFAULT_CONFIG``: the package's
  ``quickstart.yaml`` (``configs/quickstart.yaml`` links to it), read through ``importlib.resources``
  so that an installed wheel has it too;
* ``--set a.b.c=value`` parses the value as YAML (numbers, lists, null) and applies it over the file;
* the embedded default's subset sizes (``EMBEDDED_SUBSET_SIZES``: ``data.train_size``) are sized for
  its own data source; when ``--set`` changes ``data.source`` and not them, they are dropped
  (their code default, null: all), so that a collection whose files give the splits is not capped
  by Fashion-MNIST's 12000 (``workers.datasets.splits``: a size the user did not set caps nothing);
* likewise, when ``--set`` switches ``gallery.source`` away from the file's, the file's settings of
  the gallery model cmpnas trains that do not apply to the new source
  (``schema.trained_only_fields``) are dropped, with a warning naming them: they were written for
  the file's source. Set with ``--set`` too, or in a file whose own source is the other one, they
  are refused (``GalleryConfig``);
* every refusal is one ``ConfigError`` listing each bad field by its dotted name, what was given and
  what is allowed there; rules that tie fields of several sections together are
  ``cross_field_problems``.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.common.credentials import redact_tree
from orchestrator.config.schema import CmpnasConfig, GalleryConfig, trained_only_fields
from search_space.errors import CmpnasError
from workers.gallery.sources.registry import GALLERY_SOURCES

logger = logging.getLogger(__name__)

# The embedded default: a Traversable (a path in an installed package or a source tree).
DEFAULT_CONFIG = files("orchestrator.config") / "quickstart.yaml"
# Fields of the embedded default sized for its data source (Fashion-MNIST), dropped for another one.
EMBEDDED_SUBSET_SIZES = ("train_size",)


class ConfigError(CmpnasError, ValueError):
    """A configuration that cannot be used; the message names each bad field and the fix."""


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict; the value is parsed as YAML (numbers, lists, null)."""
    path, sep, raw = assignment.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"override {assignment!r} must look like section.field=value")
    keys = path.strip().split(".")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML ({error})") from error


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> CmpnasConfig:
    """Read YAML (the embedded quickstart default when ``path`` is None), apply overrides, validate."""
    embedded = not path
    path = Path(path) if path else DEFAULT_CONFIG
    tree = read_config_tree(path)
    file_sources = {section: tree[section].get("source") if isinstance(tree.get(section), dict) else None
                    for section in ("data", "gallery")}
    for assignment in overrides or []:
        apply_override(tree, assignment)
    if embedded:
        _drop_sizes_of_another_source(tree, file_sources["data"], overrides or [])
    _drop_gallery_fields_of_the_file_source(tree, file_sources["gallery"], overrides or [])
    return validate_config(tree, source=str(path))


def read_config_tree(path: Path) -> dict[str, Any]:
    """The mapping of sections in the YAML file ``path``; a file that cannot be read as one is a ``ConfigError``."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"config file {path} does not exist") from error
    except IsADirectoryError as error:
        raise ConfigError(f"config file {path} is a folder; give the YAML file (e.g. {path}/search.yaml)") from error
    except PermissionError as error:
        raise ConfigError(f"config file {path} cannot be read (permission denied); make it readable by this "
                          "user, or give another --config") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {error.start}: {error.reason}); save it "
                          "as UTF-8 YAML") from error
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(tree).__name__}")
    return tree


def _drop_sizes_of_another_source(tree: dict[str, Any], embedded_source: str | None, overrides: list[str]) -> None:
    """The embedded default's ``EMBEDDED_SUBSET_SIZES`` go when ``data.source`` was changed and they were not."""
    data = tree.get("data")
    if not isinstance(data, dict) or data.get("source") == embedded_source:
        return
    overridden = {assignment.partition("=")[0].strip() for assignment in overrides}
    for name in EMBEDDED_SUBSET_SIZES:
        if f"data.{name}" not in overridden:
            data.pop(name, None)


def _drop_gallery_fields_of_the_file_source(tree: dict[str, Any], file_source: str | None,
                                            overrides: list[str]) -> None:
    """The file's settings of a gallery model cmpnas trains go when ``--set`` switched ``gallery.source``
    to one they do not apply to (module rules), with a warning when they differ from the default."""
    gallery = tree.get("gallery")
    source = gallery.get("source", "cmpnas") if isinstance(gallery, dict) else None
    if not isinstance(source, str) or source == (file_source or "cmpnas") or source not in GALLERY_SOURCES:
        return
    overridden = {assignment.partition("=")[0].strip() for assignment in overrides}
    dropped = {name: gallery.pop(name) for name in trained_only_fields(source)
               if name in gallery and f"gallery.{name}" not in overridden}
    changed = {name: value for name, value in dropped.items()
               if value is not None and value != GalleryConfig.model_fields[name].default}
    if changed:
        settings = ", ".join(f"gallery.{name}={value!r}" for name, value in changed.items())
        logger.warning("gallery.source=%s (set with --set): the config file's %s, written for gallery.source %r, "
                       "do not apply to it and are ignored", source, settings, file_source or "cmpnas")


def validate_config(tree: dict[str, Any], source: str = "config") -> CmpnasConfig:
    # Redacted once, unused: the URIs' secrets are then masked in every later message (credentials module).
    redact_tree(tree)
    try:
        config = CmpnasConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(_describe(e) for e in error.errors())) from None
    problems = cross_field_problems(config)
    if problems:
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(f"  - {problem}" for problem in problems))
    return config


def cross_field_problems(config: CmpnasConfig) -> list[str]:
    """Rules that tie fields of different sections together."""
    from evaluators.agreement import LABEL_FREE_METRIC
    from evaluators.tasks import list_tasks, searchable_metrics

    problems = []
    allowed = (*searchable_metrics(config.evaluation.task), LABEL_FREE_METRIC)
    if config.search.metric == LABEL_FREE_METRIC and config.evaluation.agreement_k is None:
        problems.append(f"search.metric: {LABEL_FREE_METRIC!r} ranks on the label-free neighbour agreement, which "
                        "trials compute only with evaluation.agreement_k set; set it (e.g. 10), or choose a labelled "
                        f"metric of {list(allowed[:-1])}")
    problems += _agreement_size_problems(config)
    if config.search.metric == LABEL_FREE_METRIC and config.gallery.patience is not None:
        problems.append(f"gallery.patience early-stops the gallery model on search.metric gallery/gallery, and "
                        f"{LABEL_FREE_METRIC!r} is 100 for a model against itself: unset gallery.patience (a fixed "
                        "schedule) or rank on a labelled metric")
    if config.search.metric not in allowed:
        elsewhere = [task for task in list_tasks() if config.search.metric in searchable_metrics(task)]
        hint = f"; or set evaluation.task to {elsewhere[0]!r}, whose trials report it" if elsewhere else ""
        problems.append(f"search.metric: {config.search.metric!r} is not reported by the trials of evaluation.task="
                        f"{config.evaluation.task!r}; allowed values are {list(allowed)}{hint}")
    if config.training.augmentation.enabled == "on" and config.gallery.source == "embeddings":
        problems.append("training.augmentation.enabled: 'on' needs a gallery model that can embed each augmented "
                        "view, and gallery.source 'embeddings' holds embeddings of the whole images only; set it to "
                        "'off' (or 'auto'), or use the gallery model itself (gallery.source timm, onnx, ...)")
    return problems


def _agreement_size_problems(config: CmpnasConfig) -> list[str]:
    """``data.unlabelled.agreement_size`` needs a pool to hold images back from, the agreement to measure
    on them, more images than ``evaluation.agreement_k`` and fewer than ``data.unlabelled.size``."""
    pool, k, field = config.data.unlabelled, config.evaluation.agreement_k, "data.unlabelled.agreement_size"
    size = pool.agreement_size
    if not size:
        return []
    problems = []
    if not pool.classes:
        problems.append(f"{field} holds back images of the unlabelled pool, and data.unlabelled.classes names none; "
                        f"name the pool's classes, or unset {field}")
    if k is None:
        problems.append(f"{field} holds pool images back for the label-free agreement, which trials compute only "
                        f"with evaluation.agreement_k set; set it (e.g. 10), or unset {field}")
    elif size <= k:
        problems.append(f"{field}={size} images cannot give each of them evaluation.agreement_k={k} neighbours "
                        f"besides itself; hold back more than {k} images (e.g. 1000), or lower agreement_k")
    if pool.size is not None and size >= pool.size:
        problems.append(f"{field}={size} would hold back the whole pool of data.unlabelled.size={pool.size} images, "
                        f"leaving none to train on; lower it below {pool.size}")
    return problems


def flatten_fields(tree: dict[str, Any], prefix: str = "", keep_whole: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``: the dotted names that errors and overrides use.

    The dict values of keys named in ``keep_whole`` (e.g. ``loss_weights``) stay one leaf.
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in keep_whole:
            flat.update(flatten_fields(value, f"{name}.", keep_whole))
        else:
            flat[name] = value
    return flat


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = sorted(_section_of(error["loc"][:-1]).model_fields)
        return f"  - {location}: unknown field; allowed fields here are {allowed}"
    message = error["msg"].removeprefix("Value error, ")
    return f"  - {location}: {message} (got {error.get('input')!r})"


def _section_of(location: tuple[Any, ...]) -> type[BaseModel]:
    model: type[BaseModel] = CmpnasConfig
    for part in location:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model

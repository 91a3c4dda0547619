"""The configuration reference, ``docs/configuration.md``, generated from the schema so it cannot drift.

Usage::

    python -m orchestrator.config.reference --write   # regenerate the page in place
    python -m orchestrator.config.reference --check   # exit 1 when the committed page is stale
    python -m orchestrator.config.reference           # print the page (e.g. to diff it)

Rules of the page:

- It is hand-written outside the markers ``BEGIN_MARKER`` and ``END_MARKER`` (the intro: how to set
  fields) and generated between them. ``--write`` replaces only what lies between the markers.
  Printing builds the whole page from the hand-written parts on disk, so redirecting it onto the
  page itself (``> docs/configuration.md``) cannot work: the shell empties the file before it is
  read. That case is refused; use ``--write``.
- One ``##`` section and one table per section of ``CmpnasConfig``, in declaration order; fields
  at the top level (``output_dir``) come last, under "top level". Nested models
  (``training.augmentation``, ``search.evolution``, ...) are walked into: every leaf field is one
  row named by its full dotted name, as ``--set`` takes it. The docstrings of a section's models
  are printed above its table.
- Columns: field; type, readable (``int``, ``float | null``, ``one of 'a' | 'b'``, ``list of
  float``); code default, the value of ``CmpnasConfig()``; quickstart, the value ``load_config()``
  gives from the embedded ``configs/quickstart.yaml``, left blank where it equals the code default;
  constraints; description, the field's ``Field(description=...)`` as written.
- Constraints come from the field metadata (gt/ge/lt/le, min_length; on list items "each"), and
  for registry-validated fields (``REGISTRY_MODULES``) from the registries at generation time:
  the names registered then (built-ins, and any entry a plugin registered before). The metrics
  ``search.metric`` allows are listed per ``evaluation.task``. A kind of constraint this module
  does not know how to show is an error, never silently left out.
- Other rules validators enforce (e.g. ``sample_size <= population_size``) belong in the field's
  description, written concisely: cells are one line, with ``|`` escaped.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from orchestrator.config.loading import DEFAULT_CONFIG, load_config
from orchestrator.config.schema import CmpnasConfig
from search_space.errors import CmpnasError
from search_space.registry import Registry

# The page lives in the source tree (orchestrator/config/ -> the checkout's docs/): a tool for developers.
PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE_COMMAND = "python -m orchestrator.config.reference --write"
BEGIN_MARKER = (f"<!-- BEGIN GENERATED from orchestrator/config/schema.py by `{REGENERATE_COMMAND}`; "
                "do not edit by hand -->")
END_MARKER = "<!-- END GENERATED -->"
COLUMNS = ("field", "type", "code default", "quickstart", "constraints", "description")
TOP_LEVEL = "top level"

# Each module holds one Registry whose ``field`` is the config field it validates (see
# search_space.registry), by the attribute name given here.
REGISTRY_MODULES = (
    ("workers.datasets.registry", "SOURCES"),
    ("workers.gallery.sources.registry", "GALLERY_SOURCES"),
    ("search_space.registry", "SPACES"),
    ("workers.training.loss_registry", "LOSSES"),
    ("evaluators.tasks", "TASKS"),
    ("orchestrator.config.registries", "STRATEGIES"),
)


class StalePageError(CmpnasError, RuntimeError):
    """The page on disk cannot be regenerated (no markers) or differs from the schema."""


@dataclass(frozen=True)
class FieldRow:
    """One leaf field of the schema, as the page shows it."""

    name: str  # dotted, e.g. training.augmentation.enabled
    type: str
    code_default: str
    quickstart: str  # blank where the quickstart uses the code default
    constraints: str
    description: str

    def cells(self) -> tuple[str, ...]:
        return (f"`{self.name}`", self.type, f"`{self.code_default}`",
                f"`{self.quickstart}`" if self.quickstart else "", self.constraints, self.description)


@dataclass(frozen=True)
class Leaf:
    name: str
    field: FieldInfo


def registries_by_field() -> dict[str, Any]:
    """The registries that validate config fields, keyed by the dotted field each validates."""
    found = {}
    for module, attribute in REGISTRY_MODULES:
        registry = getattr(importlib.import_module(module), attribute)
        found[registry.field] = registry
    return found


def leaves(model: type[BaseModel], prefix: str = "") -> Iterator[Leaf]:
    """Every leaf field of ``model``, depth first in declaration order; nested models are walked into."""
    for name, field in model.model_fields.items():
        if _is_model(field.annotation):
            yield from leaves(field.annotation, f"{prefix}{name}.")
        else:
            yield Leaf(f"{prefix}{name}", field)


def section_models(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """``model`` and the models nested in it, with their dotted names."""
    yield prefix, model
    for name, field in model.model_fields.items():
        if _is_model(field.annotation):
            yield from section_models(field.annotation, f"{prefix}.{name}")


def value_at(config: BaseModel, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def readable_type(annotation: Any) -> str:
    """``int``, ``float | null``, ``one of 'a' | 'b'``, ``list of float``, ``(float, float)``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return readable_type(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        arguments = get_args(annotation)
        present = [readable_type(argument) for argument in arguments if argument is not type(None)]
        return " | ".join(present + ["null"] * (type(None) in arguments))
    if origin is Literal:
        return "one of " + " | ".join(repr(choice) for choice in get_args(annotation))
    if origin is list:
        return f"list of {readable_type(get_args(annotation)[0])}"
    if origin is tuple:
        return "(" + ", ".join(readable_type(argument) for argument in get_args(annotation)) + ")"
    if origin is dict:
        key, value = get_args(annotation)
        return f"map of {readable_type(key)} to {readable_type(value)}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return annotation.__name__
    raise ValueError(f"no readable form for the type {annotation!r}; teach orchestrator.config.reference to show it")


def constraints_of(leaf: Leaf, registries: dict[str, Any]) -> str:
    parts = []
    own = _bounds(leaf.field.metadata + _value_metadata(leaf.field.annotation))
    if own:
        parts.append(", ".join(own))
    items = _item_metadata(leaf.field.annotation)
    if items:
        parts.append("each " + ", ".join(_bounds(items)))
    registry = registries.get(leaf.name)
    if registry is not None:
        keys = "keys " if get_origin(_without_none(leaf.field.annotation)) is dict else ""
        parts.append(f"{keys}registered: " + ", ".join(f"`{name}`" for name in registry.names()))
    if leaf.name == "search.metric":
        parts.append(_metrics_per_task())
    return "; ".join(parts)


def render_value(value: Any) -> str:
    """A value as it would be written in the YAML file (flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        short = repr(value)
        return short if len(short) <= 8 else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {render_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, str) and not value:
        return "''"
    return str(value)


def field_rows(registries: dict[str, Any] | None = None) -> list[FieldRow]:
    """One row per leaf field of ``CmpnasConfig``."""
    registries = registries_by_field() if registries is None else registries
    defaults, quickstart = CmpnasConfig(), load_config(DEFAULT_CONFIG)
    rows = []
    for leaf in leaves(CmpnasConfig):
        default, chosen = value_at(defaults, leaf.name), value_at(quickstart, leaf.name)
        rows.append(FieldRow(
            name=leaf.name,
            type=readable_type(leaf.field.annotation),
            code_default=render_value(default),
            quickstart="" if chosen == default else render_value(chosen),
            constraints=constraints_of(leaf, registries),
            description=" ".join((leaf.field.description or "").split()),
        ))
    return rows


def generated_part() -> str:
    """The markdown between the markers: one section and table per section of the schema."""
    rows = field_rows()
    sections: list[str] = []
    top_level_rows = [row for row in rows if "." not in row.name]
    for name, field in CmpnasConfig.model_fields.items():
        if not _is_model(field.annotation):
            continue
        lines = [f"## `{name}`", ""]
        notes = [f"- `{dotted}`: {' '.join(model.__doc__.split())}"
                 for dotted, model in section_models(field.annotation, name) if _own_docstring(model)]
        if notes:
            lines += notes + [""]
        lines += _table([row for row in rows if row.name.startswith(f"{name}.")])
        sections.append("\n".join(lines))
    if top_level_rows:
        sections.append("\n".join([f"## {TOP_LEVEL}", "", *_table(top_level_rows)]))
    return "\n\n".join(sections)


def build_page(current: str) -> str:
    """``current`` (the page as written) with the part between the markers regenerated."""
    before, found_begin, rest = current.partition(BEGIN_MARKER)
    _, found_end, after = rest.partition(END_MARKER)
    if not (found_begin and found_end):
        raise StalePageError(f"{PAGE} lacks the markers {BEGIN_MARKER!r} and {END_MARKER!r} around its generated part")
    return f"{before}{BEGIN_MARKER}\n\n{generated_part()}\n\n{END_MARKER}{after}"


def check_page(page: Path = PAGE) -> None:
    """``StalePageError`` when ``page`` differs from what the schema generates."""
    current = page.read_text()
    if build_page(current) != current:
        raise StalePageError(f"{page} does not match the configuration schema; regenerate it with "
                             f"`{REGENERATE_COMMAND}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.config.reference", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"regenerate {PAGE.name} in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    arguments = parser.parse_args(argv)
    try:
        if arguments.check:
            check_page()
            return 0
        if not arguments.write and _stdout_is_the_page():
            raise StalePageError(f"stdout is {PAGE} itself, which the shell emptied before it could be read, hand-"
                                 f"written intro and all; restore the page and run `{REGENERATE_COMMAND}`")
        page = build_page(PAGE.read_text())
    except StalePageError as error:
        print(error, file=sys.stderr)
        return 1
    if arguments.write:
        PAGE.write_text(page)
    else:
        sys.stdout.write(page)
    return 0


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _own_docstring(model: type[BaseModel]) -> bool:
    # pydantic gives every model BaseModel's docstring unless the class writes its own.
    return bool(model.__doc__) and "__doc__" in vars(model) and model.__doc__ != BaseModel.__doc__


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        present = [argument for argument in get_args(annotation) if argument is not type(None)]
        if len(present) == 1:
            return present[0]
    return annotation


def _annotated_metadata(annotation: Any) -> list[Any]:
    """Constraints attached with ``Annotated`` (``PositiveInt``, ``Annotated[float, Field(ge=0)]``)."""
    if get_origin(annotation) is not Annotated:
        return []
    metadata = []
    for extra in get_args(annotation)[1:]:
        metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
    return metadata


def _value_metadata(annotation: Any) -> list[Any]:
    """Constraints on the value itself that sit in the annotation (``PositiveInt | None``)."""
    return _annotated_metadata(_without_none(annotation))


def _item_metadata(annotation: Any) -> list[Any]:
    """Constraints on each item of a list (``list[PositiveFloat]``)."""
    annotation = _without_none(annotation)
    if get_origin(annotation) is not list:
        return []
    return _annotated_metadata(get_args(annotation)[0])


def _bounds(metadata: list[Any]) -> list[str]:
    """The tightest lower and upper bound (``> 0``, ``≤ 1``) and length limits of ``metadata``."""
    lower: tuple[float, bool] | None = None  # (bound, strict)
    upper: tuple[float, bool] | None = None
    lengths = []
    for constraint in metadata:
        if isinstance(constraint, annotated_types.Gt | annotated_types.Ge):
            bound = (constraint.gt, True) if isinstance(constraint, annotated_types.Gt) else (constraint.ge, False)
            lower = bound if lower is None or bound > lower else lower
        elif isinstance(constraint, annotated_types.Lt | annotated_types.Le):
            bound = (constraint.lt, True) if isinstance(constraint, annotated_types.Lt) else (constraint.le, False)
            upper = bound if upper is None or (bound[0], not bound[1]) < (upper[0], not upper[1]) else upper
        elif isinstance(constraint, annotated_types.MinLen):
            lengths.append("non-empty" if constraint.min_length == 1 else f"length ≥ {constraint.min_length}")
        elif isinstance(constraint, annotated_types.MaxLen):
            lengths.append(f"length ≤ {constraint.max_length}")
        elif isinstance(constraint, AfterValidator) and isinstance(getattr(constraint.func, "__self__", None),
                                                                   Registry):
            continue  # a registered name: the names are listed from the registry (REGISTRY_MODULES)
        else:
            raise ValueError(f"no readable form for the constraint {constraint!r}; teach "
                             "orchestrator.config.reference to show it")
    bounds = []
    if lower is not None:
        bounds.append(f"{'>' if lower[1] else '≥'} {render_value(lower[0])}")
    if upper is not None:
        bounds.append(f"{'<' if upper[1] else '≤'} {render_value(upper[0])}")
    return bounds + lengths


def _metrics_per_task() -> str:
    from evaluators.agreement import LABEL_FREE_METRIC
    from evaluators.tasks import list_tasks, searchable_metrics

    return "per `evaluation.task`: " + "; ".join(
        f"`{task}`: " + ", ".join(f"`{metric}`" for metric in searchable_metrics(task)) for task in list_tasks()
    ) + f"; any task, with `evaluation.agreement_k`: `{LABEL_FREE_METRIC}`"


def _table(rows: list[FieldRow]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row.cells()) + " |" for row in rows]
    return lines


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _stdout_is_the_page() -> bool:
    try:
        return PAGE.exists() and os.path.samestat(os.fstat(sys.stdout.fileno()), PAGE.stat())
    except (OSError, ValueError, AttributeError):
        return False


if __name__ == "__main__":
    sys.exit(main())

"""docs/configuration.md against the schema: up to date, complete, and honest about defaults.

The expectations here are computed from the schema, the raw quickstart YAML and the registries
directly, not from ``orchestrator.config.reference``'s own walk, so a bug there fails a test.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import pytest
import yaml
from pydantic import BaseModel, Field, PositiveFloat, PositiveInt

from orchestrator.config import DEFAULT_CONFIG, CmpnasConfig, flatten_fields
from orchestrator.config.reference import (
    BEGIN_MARKER,
    COLUMNS,
    END_MARKER,
    PAGE,
    REGENERATE_COMMAND,
    Leaf,
    StalePageError,
    build_page,
    check_page,
    constraints_of,
    readable_type,
    registries_by_field,
    value_at,
)
from orchestrator.config.schema import _Section
from search_space.registry import Registry

MAX_CELL_CHARS = 300
# Validated by a name check that is no registry: timm's model list is far too long for a cell.
NAME_CHECKED_ELSEWHERE = {"gallery.backbone"}


def page_rows() -> dict[str, dict[str, str]]:
    """The page's table rows by dotted field name: column -> cell text (code spans unwrapped)."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == len(COLUMNS), f"row with {len(cells)} cells, not {len(COLUMNS)}: {line}"
        row = dict(zip(COLUMNS, cells))
        rows[row["field"].strip("`")] = row
    return rows


def schema_fields(model: type[BaseModel] = CmpnasConfig, prefix: str = "") -> dict[str, type[BaseModel]]:
    """Every leaf field of the schema by dotted name, with the model that declares it."""
    fields = {}
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            fields.update(schema_fields(field.annotation, f"{prefix}{name}."))
        else:
            fields[f"{prefix}{name}"] = model
    return fields


def unwrap(cell: str) -> str:
    return cell[1:-1] if cell.startswith("`") and cell.endswith("`") else cell


def test_committed_page_is_what_the_schema_generates():
    current = PAGE.read_text()
    assert build_page(current) == current, (f"docs/configuration.md is stale (the configuration schema, the "
                                            f"quickstart or a registry changed); regenerate it with "
                                            f"`{REGENERATE_COMMAND}`")


def test_every_field_of_the_schema_has_one_row_and_no_row_names_a_missing_field():
    assert set(page_rows()) == set(schema_fields())


def test_quickstart_column_is_filled_exactly_where_the_quickstart_overrides_a_code_default():
    defaults = CmpnasConfig()
    raw = flatten_fields(yaml.safe_load(DEFAULT_CONFIG.read_text()), keep_whole=("loss_weights",))

    def differs(name: str, value) -> bool:
        default = value_at(defaults, name)
        return (list(default) if isinstance(default, tuple) else default) != value

    overridden = {name for name, value in raw.items() if differs(name, value)}
    rows = page_rows()
    filled = {name for name, row in rows.items() if row["quickstart"]}
    assert filled == overridden
    for name in filled:
        assert rows[name]["quickstart"] != rows[name]["code default"], name
    # The quickstart's budget is not the code's default (which is no budget).
    assert unwrap(rows["search.max_mflops"]["code default"]) == "null"
    assert unwrap(rows["search.max_mflops"]["quickstart"]) == "3.0" == str(raw["search.max_mflops"])


def test_every_registry_validated_field_lists_the_registered_names():
    registries = registries_by_field()
    rows = page_rows()
    for field, registry in registries.items():
        for name in registry.names():
            assert f"`{name}`" in rows[field]["constraints"], (field, name)
    # A new field validated against a registry (``registered_in(...)`` or a ``_known_*`` validator) must be
    # listed too.
    name_checked = set()
    for dotted, model in schema_fields().items():
        field = dotted.rpartition(".")[2]
        if any(isinstance(getattr(getattr(meta, "func", None), "__self__", None), Registry)
               for meta in model.model_fields[field].metadata):
            name_checked.add(dotted)
        for decorator in model.__pydantic_decorators__.field_validators.values():
            if decorator.cls_var_name.startswith("_known_") and field in decorator.info.fields:
                name_checked.add(dotted)
    assert name_checked - NAME_CHECKED_ELSEWHERE == set(registries)


def test_search_metric_lists_the_metrics_of_each_task():
    from evaluators.tasks import list_tasks, searchable_metrics

    constraints = page_rows()["search.metric"]["constraints"]
    for task in list_tasks():
        for metric in searchable_metrics(task):
            assert f"`{metric}`" in constraints


def test_cells_stay_short():
    for name, row in page_rows().items():
        for column, cell in row.items():
            assert len(cell) <= MAX_CELL_CHARS, (f"{name}: its {column} cell has {len(cell)} characters; shorten the "
                                                 f"field's description in orchestrator/config/schema.py")


def test_readable_types_and_constraints():
    class Example(_Section):
        count: PositiveInt = 1
        ratio: float | None = Field(None, gt=0, le=1)
        at_least_two: PositiveInt = Field(4, ge=2)
        switch: Literal["auto", "on", "off"] = "auto"
        channels: Literal[1, 3] | None = None
        budgets: list[PositiveFloat] | None = None
        means: list[Annotated[float, Field(ge=0, le=1)]] | None = None
        span: tuple[float, float] = (0.5, 1.0)
        weights: dict[str, float] = {}
        name: str = Field("x", min_length=1)

    def shown(field: str) -> tuple[str, str]:
        info = Example.model_fields[field]
        return readable_type(info.annotation), constraints_of(Leaf(field, info), {})

    assert shown("count") == ("int", "> 0")
    assert shown("ratio") == ("float | null", "> 0, ≤ 1")
    assert shown("at_least_two") == ("int", "≥ 2")
    assert shown("switch") == ("one of 'auto' | 'on' | 'off'", "")
    assert shown("channels") == ("one of 1 | 3 | null", "")
    assert shown("budgets") == ("list of float | null", "each > 0")
    assert shown("means") == ("list of float | null", "each ≥ 0, ≤ 1")
    assert shown("span") == ("(float, float)", "")
    assert shown("weights") == ("map of str to float", "")
    assert shown("name") == ("str", "non-empty")


def test_an_unknown_kind_of_constraint_is_an_error_not_left_out():
    class Example(_Section):
        code: str = Field("ab", pattern="^[a-z]+$")

    with pytest.raises(ValueError, match="teach orchestrator.config.reference"):
        constraints_of(Leaf("code", Example.model_fields["code"]), {})


def test_a_stale_or_unmarked_page_is_refused_with_the_command(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text(f"# intro\n\n{BEGIN_MARKER}\n\n| old table |\n\n{END_MARKER}\n")
    with pytest.raises(StalePageError, match=re.escape(REGENERATE_COMMAND)):
        check_page(stale)
    regenerated = build_page(stale.read_text())
    assert regenerated.startswith("# intro\n\n") and "`data.source`" in regenerated
    stale.write_text(regenerated)
    check_page(stale)
    stale.write_text("# intro without markers\n")
    with pytest.raises(StalePageError, match="lacks the markers"):
        check_page(stale)

"""Property: every bad configuration is refused with a ConfigError that names the bad field.

Bad values are generated from the real pydantic schema (each field's type and bounds): wrong
types, out-of-range numbers, inf/NaN, unknown names, adversarial strings and keys, sections
replaced by junk. Each example breaks exactly one place of an otherwise valid tree, so the error
must name that place as a dotted path.
"""

from __future__ import annotations

import copy
import math
import typing
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le, MinLen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from evaluators import list_tasks
from orchestrator.config import CmpnasConfig, ConfigError, validate_config
from orchestrator.strategies import list_strategies
from search_space import list_spaces
from tests.conftest import tiny_tree
from workers.datasets import list_sources

EXAMPLES = 300
ADVERSARIAL_TEXT = st.sampled_from([
    "", " ", "\x00", "a\x00b", "../../etc/passwd", "${HOME}", "$(rm -rf /)", "'; DROP TABLE runs; --",
    "!!python/object/apply:os.system ['touch /tmp/pwned']", "\u202eevil", "\ud7ff" * 3, "nan", "inf", "-inf",
    "1e309", "0x10", "True", "none", "[1, 2]", "{a: 1}", "*", "res*", "x" * 10_000, "é\n\t\r",
])
NON_NUMERIC_TEXT = st.one_of(ADVERSARIAL_TEXT, st.text(min_size=1, max_size=30)).filter(lambda text: not _numeric(text))
JUNK = st.one_of(st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])


def _names(item) -> bool:
    """Whether a list's items are names (str, or str or index): any non-blank text is a valid one."""
    return item is str or str in typing.get_args(item)


def _numeric(text: str) -> bool:
    try:
        float(text.strip())
    except ValueError:
        return text.strip().lower() in {"true", "false", "yes", "no", "on", "off", "t", "f", "y", "n"}
    return True


def _fields(model: type[BaseModel] = CmpnasConfig, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.append(((*prefix, name), annotation))
            found.extend(_fields(annotation, (*prefix, name)))
        else:
            found.append(((*prefix, name), field))
    return found


def _unwrap(annotation) -> tuple[Any, list, bool]:
    """(base type, constraints, optional) of a field annotation such as Optional[Annotated[int, Gt(0)]]."""
    optional = False
    constraints: list = []
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        arguments = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(arguments) < len(typing.get_args(annotation))
        annotation = arguments[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *constraints = typing.get_args(annotation)
    return annotation, constraints, optional


def _bad_values(field) -> st.SearchStrategy:
    base, constraints, optional = _unwrap(field.annotation)
    constraints = constraints + list(field.metadata)
    not_none = [] if optional else [st.none()]
    if typing.get_origin(base) is typing.Literal:
        allowed = typing.get_args(base)
        return st.one_of(st.integers().filter(lambda v: v not in allowed), NON_NUMERIC_TEXT.filter(lambda v: v not in allowed),
                         JUNK, *not_none)
    if base is bool:
        return st.one_of(st.integers().filter(lambda v: v not in (0, 1)), NON_NUMERIC_TEXT, JUNK, *not_none)
    if base in (int, float):
        numbers = [NON_NUMERIC_TEXT, JUNK, NON_FINITE, *not_none]
        if base is int:
            numbers.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: not v.is_integer()))
        for bound in constraints:
            if isinstance(bound, Gt):
                numbers.append(st.integers(max_value=int(bound.gt)) if base is int else st.floats(max_value=bound.gt))
            elif isinstance(bound, Ge):
                numbers.append(st.integers(max_value=int(bound.ge) - 1) if base is int
                               else st.floats(max_value=bound.ge, exclude_max=True))
            elif isinstance(bound, Le):
                numbers.append(st.floats(min_value=bound.le, exclude_min=True, allow_infinity=False))
        return st.one_of(*numbers)
    if base is str:
        strings = [st.integers(), JUNK, st.text(max_size=8).map(lambda text: text + "\x00"), *not_none]
        if any(isinstance(bound, MinLen) for bound in constraints):
            strings.append(st.just(""))
        return st.one_of(*strings)
    if typing.get_origin(base) is dict and typing.get_args(base)[1] is Any:  # search.optuna.sampler_options
        return st.one_of(JUNK.filter(lambda v: not isinstance(v, dict)), NON_NUMERIC_TEXT, st.integers())
    if typing.get_origin(base) is dict:  # training.loss_weights
        return st.one_of(
            JUNK.filter(lambda v: not isinstance(v, dict)), NON_NUMERIC_TEXT, st.integers(),
            st.dictionaries(NON_NUMERIC_TEXT, st.floats(min_value=0, max_value=10), min_size=1, max_size=2),
            st.fixed_dictionaries({"own_classifier": st.floats(max_value=-0.001)}),
            st.fixed_dictionaries({"bct_influence": st.one_of(NON_FINITE, NON_NUMERIC_TEXT)}),
            st.just({"own_classifier": 0.0, "bct_influence": 0.0}),
        )
    if typing.get_origin(base) is list and _names(typing.get_args(base)[0]):  # class names: data.unlabelled.classes, validation_classes
        blank = st.sampled_from(["", " ", "\t", "\n "])
        item = typing.get_args(base)[0]
        numbers = [] if item is not str else [st.lists(st.integers(), min_size=1, max_size=3)]  # indices allowed
        return st.one_of(st.integers(), st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=2),
                         st.lists(blank, min_size=1, max_size=3), st.just(["sandal", "sandal"]), *numbers, *not_none)
    if typing.get_origin(base) is list:  # e.g. search.budgets_mflops (positive), gallery.input.mean (0 to 1)
        _, item_bounds, _ = _unwrap(typing.get_args(base)[0])
        out_of_range = []
        for bound in item_bounds:
            if isinstance(bound, Gt):
                out_of_range.append(st.floats(max_value=bound.gt))
            elif isinstance(bound, Ge):
                out_of_range.append(st.floats(max_value=bound.ge, exclude_max=True))
            elif isinstance(bound, Le):
                out_of_range.append(st.floats(min_value=bound.le, exclude_min=True, allow_infinity=False))
        return st.one_of(
            st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=2), NON_NUMERIC_TEXT,
            *[st.lists(values, min_size=1, max_size=3) for values in out_of_range],
            st.lists(NON_NUMERIC_TEXT, min_size=1, max_size=3), st.lists(NON_FINITE, min_size=1, max_size=2),
        )
    if typing.get_origin(base) is tuple:  # training.augmentation.crop_scale / crop_ratio: 0 < low <= high
        return st.one_of(
            NON_NUMERIC_TEXT, st.integers(), st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=2),
            st.lists(st.floats(min_value=0.1, max_value=1.0), min_size=3, max_size=4), st.just([0.5]),
            st.tuples(st.floats(max_value=0.0), st.floats(min_value=0.1, max_value=1.0)).map(list),
            st.tuples(st.floats(min_value=0.6, max_value=1.0), st.floats(min_value=0.1, max_value=0.5)).map(list),
            st.lists(NON_NUMERIC_TEXT, min_size=2, max_size=2), st.lists(NON_FINITE, min_size=2, max_size=2), *not_none,
        )
    raise AssertionError(f"no bad-value strategy for {field.annotation}")


# Fields whose validators check names against registries: any other string is bad, too.
REGISTRY_FIELDS = {("data", "source"), ("gallery", "backbone"), ("search_space", "name"), ("search", "strategy"),
                   ("evaluation", "task")}
REGISTERED_NAMES = {*list_sources(), "resnet10t", *list_spaces(), *list_strategies(), *list_tasks()}
SCHEMA = _fields()


@st.composite
def bad_configs(draw) -> tuple[dict, str]:
    tree = copy.deepcopy(tiny_tree(_Scratch()))
    path, target = draw(st.sampled_from(SCHEMA))
    kind = draw(st.sampled_from(["value", "unknown_key", "junk_section"]))
    if isinstance(target, type):  # a section
        if kind == "junk_section":
            value = draw(st.one_of(st.lists(st.integers(), min_size=1, max_size=3), st.integers(), NON_NUMERIC_TEXT))
            _set(tree, path, value)
            return tree, ".".join(path)
        key = draw(st.one_of(ADVERSARIAL_TEXT, st.text(min_size=1, max_size=20)).filter(
            lambda name: name not in target.model_fields))
        _section(tree, path)[key] = draw(st.one_of(st.integers(), st.text(max_size=5), JUNK))
        return tree, ".".join((*path, key))
    if kind == "unknown_key" and len(path) == 1:
        key = draw(st.text(min_size=1, max_size=20).filter(lambda name: name not in CmpnasConfig.model_fields))
        tree[key] = 1
        return tree, key
    if path in REGISTRY_FIELDS and draw(st.booleans()):
        value = draw(st.one_of(ADVERSARIAL_TEXT, st.text(min_size=1, max_size=20)).filter(
            lambda name: name not in REGISTERED_NAMES))
        if path == ("gallery", "backbone"):
            import timm

            if timm.is_model(value):
                value = value + "\x00"
    else:
        value = draw(_bad_values(target))
    _set(tree, path, value)
    return tree, ".".join(path)


class _Scratch:
    """A stand-in for tmp_path: the tree is only validated, never used."""

    def __truediv__(self, name: str) -> str:
        return f"/nonexistent/{name}"


def _section(tree: dict, path: tuple[str, ...]) -> dict:
    node = tree
    for key in path:
        node = node.setdefault(key, {})
    return node


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    _section(tree, path[:-1])[path[-1]] = value


def test_the_generated_schema_covers_every_field():
    leaves = {".".join(path) for path, target in SCHEMA if not isinstance(target, type)}
    assert {"data.source", "search.evolution.mutation_probability", "training.loss_weights", "output_dir",
            "tracking.outage_wait_s"} <= leaves
    assert len(leaves) >= 45


def test_the_valid_base_tree_is_valid():
    validate_config(tiny_tree(_Scratch()))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_configs())
def test_every_bad_config_is_refused_with_an_error_naming_the_field(case):
    tree, dotted = case
    with pytest.raises(ConfigError) as refused:
        validate_config(tree)
    message = str(refused.value)
    assert f"  - {dotted}" in message, (dotted, message[:2000])
    assert "Traceback" not in message

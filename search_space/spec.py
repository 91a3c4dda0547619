"""Architecture specs: what one candidate query model is, independent of how it is built.

A spec is a frozen value with a stable JSON encoding, so the same architecture gets the same id
on every node, in every MLflow run and in every exported manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from search_space.errors import CmpnasError


class SpecFormatError(CmpnasError, ValueError):
    """A serialised spec that cannot be decoded at all (not JSON, missing or extra keys)."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of inverted-residual blocks: all blocks share kernel, expansion and width."""

    depth: int
    kernel: int
    expand: int
    width: int


@dataclass(frozen=True)
class ArchSpec:
    """A candidate query architecture in a named search space.

    ``embed_dim`` and ``in_chans`` are not searched: they are tied to the gallery model and the data
    so that query vectors can be searched against gallery vectors.
    """

    space: str
    in_chans: int
    resolution: int
    stages: tuple[StageSpec, ...]
    embed_dim: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [asdict(stage) for stage in self.stages]
        return data

    def to_json(self) -> str:
        """Canonical encoding: sorted keys, no whitespace, so equal specs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def arch_id(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def short_name(self) -> str:
        stages = "-".join(f"d{s.depth}k{s.kernel}e{s.expand}w{s.width}" for s in self.stages)
        return f"r{self.resolution}_{stages}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        expected = {"space", "in_chans", "resolution", "stages", "embed_dim"}
        if not isinstance(data, dict):
            raise SpecFormatError(f"an architecture spec must be a JSON object, got {type(data).__name__}")
        missing, extra = expected - data.keys(), data.keys() - expected
        if missing or extra:
            raise SpecFormatError(
                f"architecture spec keys must be exactly {sorted(expected)}; "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        stage_keys = {"depth", "kernel", "expand", "width"}
        if not isinstance(data["stages"], list):
            raise SpecFormatError("stages must be a list of stage objects")
        stages = []
        for index, stage in enumerate(data["stages"]):
            if not isinstance(stage, dict) or set(stage) != stage_keys:
                raise SpecFormatError(f"stages[{index}] must have exactly the keys {sorted(stage_keys)}")
            stages.append(StageSpec(**{key: _as_int(f"stages[{index}].{key}", stage[key]) for key in stage_keys}))
        return cls(
            space=str(data["space"]),
            in_chans=_as_int("in_chans", data["in_chans"]),
            resolution=_as_int("resolution", data["resolution"]),
            stages=tuple(stages),
            embed_dim=_as_int("embed_dim", data["embed_dim"]),
        )

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecFormatError(f"architecture spec is not valid JSON: {error}") from error
        return cls.from_dict(data)


def _as_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecFormatError(f"{field} must be an integer, got {value!r}")
    return value

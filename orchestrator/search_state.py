"""The identity of a search, kept in ``OUTPUT_DIR/search_state.json`` so a killed search can resume.

It is written before anything else is recorded and names what a resume must find again: the
MLflow experiment and parent run, the Ray Tune experiment folder, the configuration (and its
hash), the gallery fingerprint, and how far the search got (``phase``). Writes are atomic
(temporary file, then rename), so a driver killed mid-write leaves the previous state.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.config import ConfigError, flatten_fields

STATE_FILE = "search_state.json"
# starting: parent run not yet known · running: trials under way · interrupted: stopped with trials
# left · trials_done: every trial ended, the Pareto stage is not yet recorded · finished: all recorded
RESUMABLE_PHASES = ("starting", "running", "interrupted", "trials_done")
# Fields a resume may change: where things run and where results go, never what is searched.
# (The Tune experiment keeps its own copy of trial resources, concurrency and retry settings.)
CHANGEABLE_ON_RESUME = frozenset({
    "tracking.uri", "tracking.outage_wait_s", "ray.address", "ray.num_cpus", "ray.ship_code",
})


class ResumeError(RuntimeError):
    """There is no search to resume here, or it cannot be resumed with this configuration."""


@dataclass
class SearchState:
    search_id: str
    config: dict[str, Any]
    config_hash: str
    tracking_uri: str
    experiment: str
    phase: str = "starting"
    parent_run_id: str | None = None
    experiment_id: str | None = None
    tune_experiment_path: str | None = None
    gallery_fingerprint: str | None = None
    # The gallery model's identity: source, description, fingerprint, embedding size, input spec.
    gallery: dict[str, Any] | None = None
    sessions: int = 1
    trial_ids: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)

    @classmethod
    def new(cls, config: dict[str, Any], tracking_uri: str, experiment: str) -> SearchState:
        return cls(search_id=uuid.uuid4().hex, config=config, config_hash=config_hash(config),
                   tracking_uri=tracking_uri, experiment=experiment)

    @staticmethod
    def path_in(output_dir: str | Path) -> Path:
        return Path(output_dir) / STATE_FILE

    @classmethod
    def load(cls, output_dir: str | Path) -> SearchState | None:
        path = cls.path_in(output_dir)
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as error:
            raise ResumeError(f"{path} is not a cmpnas search state ({error}); it was edited or damaged") from error

    def save(self, output_dir: str | Path) -> None:
        path = self.path_in(output_dir)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(temporary, path)

    def moved_to(self, phase: str) -> SearchState:
        return replace(self, phase=phase, history=[*self.history, phase])


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


# Fields added after searches were recorded without them, with the values that keep such a search
# doing what it did (no epochs raised, no augmentation, the splits it had): a resume fills them in.
FIELDS_OF_EARLIER_SEARCHES = {
    ("data", "protocol"): "closed_set", ("data", "train_classes"): None, ("data", "max_bad_fraction"): 0.0,
    ("data", "streaming"): "off", ("data", "cache_dir"): None, ("data", "decode_workers"): None,
    ("training", "min_steps"): 0,
    ("training", "augmentation"): {"enabled": "off", "crop_scale": [0.35, 1.0], "crop_ratio": [0.75, 4 / 3],
                                   "horizontal_flip": True},
    ("evaluation", "compatibility_ratio"): 0.5,
}


def with_earlier_defaults(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded configuration with the fields it predates set as ``FIELDS_OF_EARLIER_SEARCHES`` says."""
    tree = {section: dict(values) if isinstance(values, dict) else values for section, values in recorded.items()}
    for (section, name), value in FIELDS_OF_EARLIER_SEARCHES.items():
        if isinstance(tree.get(section), dict) and name not in tree[section]:
            tree[section][name] = value
    return tree


def check_resume_config(recorded: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Refuse a resume that would change what is searched; returns the fields that do change.

    Raises ``ConfigError`` naming each field that differs and may not change.
    """
    old, new = flatten_fields(with_earlier_defaults(recorded)), flatten_fields(requested)
    changed = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
    refused = [name for name in changed if name not in CHANGEABLE_ON_RESUME and name != "output_dir"]
    if refused:
        details = "; ".join(f"{name} was {old.get(name)!r}, now {new.get(name)!r}" for name in refused)
        raise ConfigError(
            f"cannot resume with a changed configuration: {details}. A resume continues the same search; "
            f"only {sorted(CHANGEABLE_ON_RESUME)} may change. Start a new search in another output_dir to "
            "search with other settings"
        )
    return changed

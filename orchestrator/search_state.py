"""The identity of a search, kept in ``OUTPUT_DIR/search_state.json`` so a killed search can resume.

It is written before anything else is recorded and names what a resume must find again: the
MLflow experiment and parent run, the Ray Tune experiment folder, the configuration (and its
hash), the gallery fingerprint, the supernet fingerprint in the inherit modes, and how far the
search got (``phase``). Writes are atomic and durable (a temporary file of a unique name, fsynced,
renamed over the old one, then the folder fsynced), so a driver killed mid-write leaves the
previous state, and a machine that loses power after a phase was saved keeps it.

The file holds no credentials (``orchestrator.credentials``: URIs are stored without their
user-info and secret query parameters) and is not trusted to say where Tune's pickled experiment
is: that path is derived from the configuration on every session (``tune_experiment_path``) and
a recorded one that differs is refused (see docs/reliability.md, "Trust boundary").
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.config import ConfigError, flatten_fields
from orchestrator.credentials import redact_tree, redact_uri
from workers.durable_write import write_text_durably

STATE_FILE = "search_state.json"
# starting: parent run not yet known · running: trials under way · interrupted: stopped with trials
# left · trials_done: every trial ended, the Pareto stage is not yet recorded · final_training: the
# front is recorded, its final training (search.final_training) not yet · finished: all recorded
RESUMABLE_PHASES = ("starting", "running", "interrupted", "trials_done", "final_training")
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
    # The supernet the candidates inherit from (training.mode inherit*), None in mode scratch.
    supernet_fingerprint: str | None = None
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
        """Write the state atomically and durably, with every URI in it stripped of credentials."""
        path = self.path_in(output_dir)
        write_text_durably(path, json.dumps(redact_tree(asdict(self)), indent=2, sort_keys=True))

    def moved_to(self, phase: str) -> SearchState:
        return replace(self, phase=phase, history=[*self.history, phase])


def holds_unfinished_search(output_dir: str | Path) -> bool:
    """Whether ``output_dir`` holds a search that ``--resume`` can continue."""
    state = SearchState.load(output_dir)
    return state is not None and state.phase in RESUMABLE_PHASES


def config_hash(config: dict[str, Any]) -> str:
    """The hash of a configuration as recorded, i.e. without credentials."""
    return hashlib.sha256(json.dumps(redact_tree(config), sort_keys=True).encode()).hexdigest()


def tune_experiment_path(storage_path: str, parent_run_id: str) -> str:
    """Where a search keeps its Tune experiment: always derived from ``ray.storage_path`` (or
    ``OUTPUT_DIR/ray_results``) and the parent run, never read from the state file, because a
    resume unpickles what it finds there."""
    return f"{storage_path.rstrip('/')}/search-{parent_run_id[:8]}"


def check_recorded_tune_path(state: SearchState, derived: str) -> None:
    """Refuse a state file naming another Tune experiment than the configuration gives: it was edited,
    or the search ran with another ``ray.storage_path``; restoring from there would unpickle files
    from outside the storage the search wrote to."""
    recorded = state.tune_experiment_path
    if recorded is not None and recorded != redact_uri(derived):
        raise ResumeError(
            f"{STATE_FILE} names the Tune experiment {recorded!r}, but ray.storage_path (default OUTPUT_DIR/ray_results) "
            f"puts it at {redact_uri(derived)!r}. cmpnas restores (unpickles) a Tune experiment only from the "
            "configured storage path: resume with the ray.storage_path and output_dir the search ran with"
        )


# Fields added after searches were recorded without them, with the values that keep such a search
# doing what it did (no epochs raised, no augmentation, the splits it had): a resume fills them in.
FIELDS_OF_EARLIER_SEARCHES = {
    ("data", "protocol"): "closed_set", ("data", "train_classes"): None, ("data", "max_bad_fraction"): 0.0,
    ("data", "streaming"): "off", ("data", "cache_dir"): None, ("data", "decode_workers"): None,
    ("training", "min_steps"): 0,
    ("training", "loss_parameters"): {},
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
    # Compared without credentials: the recorded configuration holds none.
    old = flatten_fields(redact_tree(with_earlier_defaults(recorded)))
    new = flatten_fields(redact_tree(requested))
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

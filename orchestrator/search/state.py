"""The identity of a search, kept in ``OUTPUT_DIR/search_state.json`` so a killed search can resume.

It is written before anything else is recorded and names what a resume must find again: the
MLflow experiment and parent run, the Ray Tune experiment folder, the configuration (and its
hash), the gallery fingerprint, the supernet fingerprint in the inherit modes, how far the search
got (``phase``, ``orchestrator.search.phases``) and the format it was recorded in (``format``).
Writes are atomic and durable (a temporary file of a unique name, fsynced, renamed over the old
one, then the folder fsynced), so a driver killed mid-write leaves the previous state, and a
machine that loses power after a phase was saved keeps it.

The file holds no credentials (``orchestrator.common.credentials``: URIs are stored without their
user-info and secret query parameters) and is not trusted to say where Tune's pickled experiment
is: that path is derived from the configuration on every session (``tune_experiment_path``) and
a recorded one that differs is refused (see docs/reliability.md, "Trust boundary").
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.common.credentials import redact_tree, redact_uri
from orchestrator.config import CmpnasConfig, ConfigError, flatten_fields
from orchestrator.config.schema import GalleryConfig, trained_only_fields
from orchestrator.search.phases import (
    LAST_VERSION_OF_FORMAT,
    RESUMABLE_PHASES,
    STATE_FORMAT,
    TRIAL_PHASES,
    SearchPhase,
    check_transition,
)
from orchestrator.setup.tune_experiment import can_restore
from orchestrator.tracking.journal import JOURNAL_FOLDER, retire_journal, unsent_writes
from search_space.errors import CmpnasError
from workers.compatibility.supernet_checkpoint import SupernetCheckpoint
from workers.storage.durable_write import write_text_durably

logger = logging.getLogger(__name__)

STATE_FILE = "search_state.json"
# Fields a resume may change: where things run and where results go, never what is searched.
# (The Tune experiment keeps its own copy of trial resources, concurrency and retry settings.)
CHANGEABLE_ON_RESUME = frozenset({
    "tracking.uri", "tracking.outage_wait_s", "ray.address", "ray.num_cpus", "ray.ship_code",
    # Trust, not search: the resume's own opt-in, checked against the file's recorded fingerprint.
    "gallery.allow_torchscript",
})


class ResumeError(CmpnasError, RuntimeError):
    """There is no search to resume here, or it cannot be resumed with this configuration."""


@dataclass
class SearchState:
    search_id: str
    config: dict[str, Any]
    config_hash: str
    tracking_uri: str
    experiment: str
    phase: SearchPhase = SearchPhase.STARTING
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
    # Of what the search records outside MLflow (orchestrator.search.phases.STATE_FORMAT).
    format: int = STATE_FORMAT

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
            recorded = json.loads(path.read_text(encoding="utf-8"))
            recorded.setdefault("format", 1)  # written before the field existed
            recorded["phase"] = SearchPhase(recorded.get("phase", SearchPhase.STARTING))
            return cls(**recorded)
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as error:
            raise ResumeError(f"{path} is not a cmpnas search state ({error}); it was edited or damaged") from error

    def save(self, output_dir: str | Path) -> None:
        """Write the state atomically and durably, with every URI in it stripped of credentials."""
        path = self.path_in(output_dir)
        write_text_durably(path, json.dumps(redact_tree(asdict(self)), indent=2, sort_keys=True))

    def moved_to(self, phase: SearchPhase) -> SearchState:
        """This state in ``phase``, a move ``orchestrator.search.phases.TRANSITIONS`` allows."""
        phase = SearchPhase(phase)
        check_transition(self.phase, phase)
        return replace(self, phase=phase, history=[*self.history, phase.value])


def open_search_state(config: CmpnasConfig, output_dir: Path, tracking_uri: str, resume: bool) -> SearchState:
    """The search to run: a new one, or with ``resume`` the one recorded in ``output_dir``."""
    recorded = SearchState.load(output_dir)
    requested = config.model_dump(mode="json")
    if not resume:
        _check_folder_is_free(recorded, output_dir)
        retire_journal(output_dir / JOURNAL_FOLDER)
        state = SearchState.new(requested, tracking_uri, config.tracking.experiment)
        state.save(output_dir)
        return state
    if recorded is None:
        raise ResumeError(f"no search to resume in output_dir={str(output_dir)!r} ({SearchState.path_in(output_dir)} "
                          "is missing); run `cmpnas search` without --resume to start one")
    if recorded.phase not in RESUMABLE_PHASES:
        raise ResumeError(f"the search in {output_dir} has finished (parent run {recorded.parent_run_id}); "
                          "nothing to resume. `cmpnas pareto` shows its front")
    check_state_format(recorded)
    changed = check_resume_config(recorded.config, requested)
    if changed:
        logger.warning("resuming with changed %s", ", ".join(changed))
    recorded.config, recorded.tracking_uri, recorded.format = requested, tracking_uri, STATE_FORMAT
    recorded.sessions += 1
    recorded.save(output_dir)
    return recorded


def _check_folder_is_free(recorded: SearchState | None, output_dir: Path) -> None:
    """A new search may not take a folder holding an unfinished search or writes MLflow never got."""
    if recorded is not None and recorded.phase in RESUMABLE_PHASES:
        raise ResumeError(
            f"{output_dir} holds an unfinished search (parent run {recorded.parent_run_id}, {recorded.phase}): "
            "continue it with `cmpnas search --resume`, or set output_dir to another folder for a new search"
        )
    unsent = unsent_writes(output_dir / JOURNAL_FOLDER)
    if unsent:
        earlier = f" (parent run {recorded.parent_run_id})" if recorded is not None else ""
        raise ResumeError(
            f"{output_dir} holds {unsent} tracking writes of an earlier search{earlier} that never reached "
            f"MLflow: send them with `cmpnas sync --output-dir {output_dir}`, or set output_dir to another "
            "folder for a new search"
        )


def check_state_format(recorded: SearchState) -> None:
    """Refuse to resume a search of an earlier format whose Tune experiment would be restored: Tune
    unpickles its callbacks and searcher by module path (``orchestrator.search.phases``)."""
    if recorded.format >= STATE_FORMAT or recorded.phase not in TRIAL_PHASES:
        return
    path = recorded.tune_experiment_path
    if path is not None and can_restore(path):
        version = LAST_VERSION_OF_FORMAT[recorded.format]
        raise ResumeError(
            f"the search in this output_dir (parent run {recorded.parent_run_id}, {recorded.phase}) was recorded by "
            f"cmpnas {version}, whose Ray Tune experiment ({path}) names modules that this cmpnas moved: finish it "
            f"with cmpnas {version} (`pip install cmpnas=={version}`, then `cmpnas search --resume`), or start a new "
            "search in another output_dir; its finished candidates stay in MLflow (`cmpnas pareto --all`)"
        )


def check_resumed_supernet(state: SearchState, supernet: SupernetCheckpoint | None) -> None:
    """A resume inherits from the supernet the search started with, or is refused; a new search records it."""
    fingerprint = supernet.fingerprint if supernet is not None else None
    if state.sessions > 1 and state.supernet_fingerprint is not None and fingerprint != state.supernet_fingerprint:
        found = f"fingerprint {fingerprint[:12]}" if fingerprint else "none (training.mode scratch)"
        raise ResumeError(
            f"the search in this output_dir started with the supernet of fingerprint {state.supernet_fingerprint[:12]}; "
            f"supernet.checkpoint now gives {found}. Its finished trials inherited from the first: resume with that "
            "supernet file, or start a new search in another output_dir"
        )
    state.supernet_fingerprint = fingerprint


def forget_unstarted_search(state: SearchState, output_dir: Path) -> None:
    """A new search refused before its parent run existed (bad gallery file, data, cluster) recorded
    nothing that a resume could continue: its state file goes, so the next start may use the folder."""
    if state.phase == SearchPhase.STARTING and state.parent_run_id is None and state.sessions == 1:
        SearchState.path_in(output_dir).unlink(missing_ok=True)


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
    ("data", "cache_trusted_group"): None, ("data", "allow_paths_outside_root"): True,
    ("data", "validation_max_fraction"): 1.0,  # no cap: the split such a search was carved with
    ("data", "trial_train_size"): None,  # trials trained on the whole train split
    ("training", "min_steps"): 0, ("gallery", "min_steps"): 0,
    ("training", "loss_parameters"): {},
    ("training", "augmentation"): {"enabled": "off", "crop_scale": [0.35, 1.0], "crop_ratio": [0.75, 4 / 3],
                                   "horizontal_flip": True},
    ("evaluation", "compatibility_ratio"): 0.5, ("evaluation", "paragon_ratio"): 0.0,
    ("evaluation", "chance_margin"): None, ("evaluation", "held_out"): "split",
    ("search", "max_latency_ms"): None, ("gallery", "allow_torchscript"): False,
    ("data", "validation_classes"): None, ("evaluation", "agreement_k"): None,  # train-class validation, no agreement
    ("search", "optuna"): {"sampler": "TPESampler", "sampler_options": {}, "initial_trials": 10, "storage": None,
                           "study_name": None},
    ("data", "unlabelled"): {"classes": [], "size": None, "evaluate_classes": True, "agreement_size": None},
    # no pool
    ("training", "unlabelled_weight"): 1.0, ("training", "unlabelled_batch_size"): None,
    ("gallery", "mixed_precision"): False,  # trained in float32
}


def with_earlier_defaults(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded configuration with the fields it predates set as ``FIELDS_OF_EARLIER_SEARCHES`` says."""
    tree = {section: dict(values) if isinstance(values, dict) else values for section, values in recorded.items()}
    gallery_source = (tree.get("gallery") or {}).get("source", "cmpnas") if isinstance(tree.get("gallery"), dict) \
        else "cmpnas"
    for (section, name), value in FIELDS_OF_EARLIER_SEARCHES.items():
        if isinstance(tree.get(section), dict) and name not in tree[section]:
            # A field of the gallery model cmpnas trains keeps its default for another source (it does not apply).
            foreign = section == "gallery" and name in trained_only_fields(gallery_source)
            tree[section][name] = GalleryConfig.model_fields[name].default if foreign else value
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

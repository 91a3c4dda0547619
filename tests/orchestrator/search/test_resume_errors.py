"""Resume and sync refuse what they cannot do, with exit code 2, and leave the recorded search as it was."""

import json
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import ConfigError, validate_config
from orchestrator.search.state import ResumeError, SearchState
from tests.conftest import tiny_tree


def _invoke(*args):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return SimpleNamespace(exit_code=result.exit_code, text=" ".join(result.output.split()))


def _recorded_search(tmp_path, phase="running"):
    tree = tiny_tree(tmp_path)
    config = validate_config(tree)
    state = SearchState.new(config.model_dump(mode="json"), config.tracking.uri, config.tracking.experiment)
    state.phase, state.parent_run_id = phase, "0123456789abcdef"
    (tmp_path / "out").mkdir()
    state.save(tmp_path / "out")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path, SearchState.path_in(tmp_path / "out").read_text()


def test_resume_without_a_recorded_search_says_how_to_start_one(tmp_path):
    result = _invoke("search", "--resume", "--set", f"output_dir={tmp_path / 'empty'}")
    assert result.exit_code == 2
    assert "no search to resume" in result.text and "without --resume" in result.text


def test_resume_with_a_changed_search_names_the_field_and_changes_nothing(tmp_path):
    config, before = _recorded_search(tmp_path)
    result = _invoke("search", "--config", str(config), "--resume", "--set", "search.num_candidates=7")
    assert result.exit_code == 2
    assert "search.num_candidates was 3, now 7" in result.text and "tracking.uri" in result.text
    assert SearchState.path_in(tmp_path / "out").read_text() == before
    result = _invoke("search", "--resume", "--set", f"output_dir={tmp_path / 'out'}", "--set", "training.lr=0.1")
    assert result.exit_code == 2 and "training.lr was 0.003, now 0.1" in result.text


def test_a_new_search_will_not_overwrite_an_unfinished_one(tmp_path):
    config, before = _recorded_search(tmp_path)
    result = _invoke("search", "--config", str(config))
    assert result.exit_code == 2 and "unfinished search" in result.text and "--resume" in result.text
    assert SearchState.path_in(tmp_path / "out").read_text() == before


def test_a_finished_search_is_not_resumed(tmp_path):
    config, _ = _recorded_search(tmp_path, phase="finished")
    result = _invoke("search", "--config", str(config), "--resume")
    assert result.exit_code == 2 and "has finished" in result.text


def test_sync_needs_a_search_and_a_damaged_state_file_is_named(tmp_path):
    result = _invoke("sync", "--output-dir", str(tmp_path))
    assert result.exit_code == 2 and "holds no cmpnas search" in result.text
    (tmp_path / "search_state.json").write_text("{not json")
    result = _invoke("sync", "--output-dir", str(tmp_path))
    assert result.exit_code == 2 and "is not a cmpnas search state" in result.text


# Every leaf field of the configuration as cmpnas 0.2.0 recorded it (its schema's defaults, flattened).
FIELDS_OF_0_2_0 = (
    "data.cache_dir",
    "data.channels",
    "data.decode_workers",
    "data.download",
    "data.gallery_size",
    "data.image_size",
    "data.max_bad_fraction",
    "data.protocol",
    "data.query_size",
    "data.root",
    "data.seed",
    "data.source",
    "data.streaming",
    "data.train_classes",
    "data.train_size",
    "data.validation_size",
    "evaluation.compatibility_ratio",
    "evaluation.task",
    "export.output_dir",
    "export.registered_model_name",
    "gallery.backbone",
    "gallery.batch_size",
    "gallery.checkpoint",
    "gallery.classifier",
    "gallery.embed_dim",
    "gallery.epochs",
    "gallery.head",
    "gallery.input.channels",
    "gallery.input.mean",
    "gallery.input.size",
    "gallery.input.std",
    "gallery.lr",
    "gallery.mflops",
    "gallery.path",
    "gallery.patience",
    "gallery.source",
    "gallery.stem_stride",
    "gallery.weight_decay",
    "output_dir",
    "ray.address",
    "ray.num_cpus",
    "ray.ship_code",
    "ray.storage_path",
    "resources.cpus_per_trial",
    "resources.gpus_per_trial",
    "resources.max_failures",
    "resources.measure_latency",
    "search.asha.grace_period",
    "search.asha.reduction_factor",
    "search.budgets_mflops",
    "search.evolution.crossover_probability",
    "search.evolution.mutation_probability",
    "search.evolution.population_size",
    "search.evolution.sample_size",
    "search.final_training.epochs",
    "search.max_concurrent",
    "search.max_mflops",
    "search.metric",
    "search.nsga2.crossover_probability",
    "search.nsga2.mutation_probability",
    "search.nsga2.population_size",
    "search.nsga2.swapping_probability",
    "search.num_candidates",
    "search.optuna.initial_trials",
    "search.optuna.sampler",
    "search.optuna.sampler_options",
    "search.optuna.storage",
    "search.optuna.study_name",
    "search.predictor.candidates_per_proposal",
    "search.predictor.enabled",
    "search.predictor.l2",
    "search.predictor.min_observations",
    "search.scheduler",
    "search.seed",
    "search.strategy",
    "search_space.name",
    "supernet.batch_size",
    "supernet.calibration_images",
    "supernet.checkpoint",
    "supernet.cpus",
    "supernet.distillation",
    "supernet.distillation_weight",
    "supernet.epochs",
    "supernet.gpus",
    "supernet.lr",
    "supernet.num_random_subnets",
    "supernet.weight_decay",
    "tracking.experiment",
    "tracking.outage_wait_s",
    "tracking.run_name",
    "tracking.uri",
    "training.augmentation.crop_ratio",
    "training.augmentation.crop_scale",
    "training.augmentation.enabled",
    "training.augmentation.horizontal_flip",
    "training.batch_size",
    "training.channels_last",
    "training.epochs",
    "training.finetune_epochs",
    "training.loss_parameters",
    "training.loss_weights.cosine_alignment",
    "training.lr",
    "training.min_steps",
    "training.mixed_precision",
    "training.mode",
    "training.weight_decay",
)


def test_every_field_added_since_0_2_0_says_how_a_recorded_search_resumes():
    from orchestrator.config import load_config
    from orchestrator.config.loading import flatten_fields
    from orchestrator.search.state import FIELDS_OF_EARLIER_SEARCHES, check_resume_config, with_earlier_defaults

    current = load_config().model_dump(mode="json")
    added = sorted(set(flatten_fields(current)) - set(FIELDS_OF_0_2_0))
    covered = {f"{section}.{name}" for section, name in FIELDS_OF_EARLIER_SEARCHES}
    missing = [name for name in added if not any(name == field or name.startswith(field + ".") for field in covered)]
    assert not missing, f"fields a 0.2.0 search lacks, with no entry in FIELDS_OF_EARLIER_SEARCHES: {missing}"
    # A 0.2.0 search resumed as recorded (no --config): filled in, nothing changes.
    recorded = _tree_with_only(current, FIELDS_OF_0_2_0)
    filled = validate_config(with_earlier_defaults(recorded)).model_dump(mode="json")
    assert check_resume_config(recorded, filled) == []


def _tree_with_only(tree, names):
    kept = {section: {} if isinstance(values, dict) else values for section, values in tree.items()}
    for name in names:
        section, _, rest = name.partition(".")
        if not rest:  # a top-level value (output_dir)
            kept[section] = tree[section]
            continue
        node, parts = tree[section], rest.split(".")
        target = kept[section]
        for part in parts[:-1]:
            node = node[part]
            target = target.setdefault(part, {})
        target[parts[-1]] = node[parts[-1]]
    return kept


def test_a_search_recorded_before_newer_fields_resumes_as_it_ran():
    from orchestrator.config import load_config
    from orchestrator.search.state import FIELDS_OF_EARLIER_SEARCHES, check_resume_config, with_earlier_defaults

    current = load_config().model_dump(mode="json")
    recorded = {section: dict(values) if isinstance(values, dict) else values for section, values in current.items()}
    for section, name in FIELDS_OF_EARLIER_SEARCHES:
        recorded[section].pop(name)
    # Without --config the recorded tree is filled with the old behaviour: nothing changes.
    filled = validate_config(with_earlier_defaults(recorded)).model_dump(mode="json")
    assert check_resume_config(recorded, filled) == []
    assert filled["training"]["min_steps"] == 0 and filled["training"]["augmentation"]["enabled"] == "off"
    # Today's defaults would train more epochs part-way through the search: refused, naming the field.
    with pytest.raises(ConfigError, match="training.min_steps was 0, now 120"):
        check_resume_config(recorded, current)


def _format_one_search(tmp_path, phase: str):
    """A search as cmpnas 0.1 recorded it: a state file without ``format``, and a Tune experiment whose
    pickles name the modules of that layout (only their presence matters to the check)."""
    config, _ = _recorded_search(tmp_path, phase)
    path = SearchState.path_in(tmp_path / "out")
    recorded = json.loads(path.read_text())
    del recorded["format"]
    experiment = tmp_path / "out" / "ray_results" / "search-01234567"
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"pickled by cmpnas 0.1: orchestrator.mlflow_callback ...")
    (experiment / "experiment_state-2026-12-01_00-00-00.json").write_text("{}")
    recorded["tune_experiment_path"] = str(experiment)
    path.write_text(json.dumps(recorded))
    return config, path.read_text()


def test_a_search_recorded_before_the_layout_moved_is_refused_naming_the_version_that_finishes_it(tmp_path):
    config, before = _format_one_search(tmp_path, "interrupted")
    assert SearchState.load(tmp_path / "out").format == 1
    result = _invoke("search", "--config", str(config), "--resume")
    assert result.exit_code == 2
    assert "recorded by cmpnas 0.1.0" in result.text and "pip install cmpnas==0.1.0" in result.text
    assert "cmpnas pareto" in result.text, "its finished candidates stay readable"
    assert SearchState.path_in(tmp_path / "out").read_text() == before, "the refused resume changed nothing"


def test_a_search_of_the_earlier_format_whose_trials_had_ended_goes_on(tmp_path):
    from orchestrator.search.state import check_state_format

    _format_one_search(tmp_path, "trials_done")
    recorded = SearchState.load(tmp_path / "out")
    assert recorded.format == 1
    check_state_format(recorded)  # its front and final training need no pickle of the old layout
    recorded.phase = "interrupted"
    with pytest.raises(ResumeError, match="cmpnas 0.1.0"):
        check_state_format(recorded)


def test_a_state_file_that_is_not_utf8_is_a_resume_error(tmp_path):
    from orchestrator.search.state import ResumeError, SearchState

    SearchState.path_in(tmp_path).write_bytes(b'\xff\xfe{"phase": "running"}')
    with pytest.raises(ResumeError, match=r"is not a cmpnas search state \('utf-8' codec can't decode"):
        SearchState.load(tmp_path)

"""Resume and sync refuse what they cannot do, with exit code 2, and leave the recorded search as it was."""

from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import ConfigError, validate_config
from orchestrator.search_state import SearchState
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


def test_a_search_recorded_before_newer_fields_resumes_as_it_ran():
    from orchestrator.config import load_config
    from orchestrator.search_state import FIELDS_OF_EARLIER_SEARCHES, check_resume_config, with_earlier_defaults

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

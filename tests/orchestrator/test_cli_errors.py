"""Bad input through the real CLI: a clear error naming the cause, exit code 2, nothing lost."""

from types import SimpleNamespace

import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tests.conftest import tiny_tree
from orchestrator.cli import app


def _invoke(tmp_path, *args, **sections):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(tmp_path, **sections)))
    result = CliRunner().invoke(app, ["search", "--config", str(path), *args], env={"COLUMNS": "200"})
    return SimpleNamespace(exit_code=result.exit_code, text=" ".join(result.output.split()))  # rich wraps lines


def test_bad_config_value_names_field_and_allowed_values(tmp_path):
    result = _invoke(tmp_path, "--set", "search.strategy=grid")
    assert result.exit_code == 2
    # The allowed values come from the strategy registry (orchestrator.strategies).
    assert "search.strategy" in result.text and "['evolution', 'nsga2', 'random']" in result.text


def test_missing_data_set_is_a_clear_error(tmp_path):
    result = _invoke(tmp_path, "--set", f"data.root={tmp_path / 'no-data'}")
    assert result.exit_code == 2
    assert "Fashion-MNIST not found" in result.text and "dataset-fashion-mnist" in result.text


def test_corrupt_gallery_checkpoint_is_refused_and_recorded_runs_are_kept(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("cmpnas-test")
    earlier = client.create_run(experiment_id, run_name="earlier")
    client.log_metric(earlier.info.run_id, "cross_r1", 80.0)
    (tmp_path / "gallery.safetensors").write_bytes(b"\x80\x04 definitely not a checkpoint")
    result = _invoke(tmp_path)
    assert result.exit_code == 2
    assert "gallery.safetensors" in result.text and "not a readable safetensors checkpoint" in result.text
    runs = client.search_runs([experiment_id])
    assert [run.info.run_id for run in runs] == [earlier.info.run_id]
    assert runs[0].data.metrics["cross_r1"] == 80.0


def test_missing_gallery_checkpoint_and_unwritable_output_dir(tmp_path):
    result = _invoke(tmp_path, "--set", f"gallery.checkpoint={tmp_path / 'absent.safetensors'}")
    assert result.exit_code == 2 and "gallery.checkpoint" in result.text and "cmpnas gallery train" in result.text
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _invoke(tmp_path, "--set", f"output_dir={blocker / 'sub'}")
    assert result.exit_code == 2 and "output_dir" in result.text


def test_gallery_checkpoint_of_another_configuration_is_refused(tmp_path, gallery_dir):
    checkpoint = gallery_dir / "gallery.safetensors"
    result = _invoke(tmp_path, "--set", f"gallery.checkpoint={checkpoint}", "--set", "gallery.embed_dim=64")
    assert result.exit_code == 2
    assert "gallery.embed_dim is 64 but the checkpoint's is 128" in result.text


def test_trial_resources_no_node_has_are_refused_before_anything_is_recorded(tmp_path, gallery_dir):
    checkpoint = gallery_dir / "gallery.safetensors"
    result = _invoke(tmp_path, "--set", f"gallery.checkpoint={checkpoint}", "--set", "resources.gpus_per_trial=1")
    assert result.exit_code == 2 and "resources.gpus_per_trial=1" in result.text
    assert not (tmp_path / "mlflow.db").exists()

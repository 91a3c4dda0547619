"""Bad input through the real CLI: a clear error naming the cause, exit code 2, nothing lost."""

from types import SimpleNamespace

import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import tiny_tree


def _invoke(tmp_path, *args, **sections):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(tmp_path, **sections)))
    result = CliRunner().invoke(app, ["search", "--config", str(path), *args], env={"COLUMNS": "200"})
    return SimpleNamespace(exit_code=result.exit_code, text=" ".join(result.output.split()))  # rich wraps lines


def test_bad_config_value_names_field_and_allowed_values(tmp_path):
    result = _invoke(tmp_path, "--set", "search.strategy=grid")
    assert result.exit_code == 2
    # The allowed values come from the strategy registry (orchestrator.strategies).
    assert "search.strategy" in result.text and "['evolution', 'nsga2', 'optuna', 'random']" in result.text


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


def test_a_start_refused_for_its_gallery_file_leaves_the_folder_free(tmp_path):
    """A search that never started does not lock output_dir: the next start gets the same clear error,
    not "holds an unfinished search", and nothing reaches MLflow."""
    weights = tmp_path / "weights.pth"
    weights.write_text("a text file, not weights")
    gallery = {"source": "timm", "backbone": "resnet18", "path": str(weights), "checkpoint": None}
    for _ in range(2):
        result = _invoke(tmp_path, gallery=gallery)
        assert result.exit_code == 2
        assert "neither a safetensors file nor a state_dict" in result.text and "unfinished search" not in result.text
    assert not (tmp_path / "out" / "search_state.json").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_and_unexpected_weight_keys_are_listed_by_the_cli(tmp_path):
    import timm
    import torch

    state = timm.create_model("resnet10t", num_classes=0).state_dict()
    state["projection.weight"] = torch.zeros(4, 4)
    del state["conv1.0.weight"]
    torch.save(state, tmp_path / "weights.pth")
    result = _invoke(tmp_path, gallery={"source": "timm", "backbone": "resnet10t", "path": str(tmp_path / "weights.pth"),
                                        "checkpoint": None})
    assert result.exit_code == 2
    assert "missing keys: ['conv1.0.weight']" in result.text and "unexpected keys: ['projection.weight']" in result.text
    assert "gallery.backbone" in result.text


def test_an_embedding_size_that_disagrees_with_the_configured_one_is_refused(tmp_path):
    import numpy as np

    store = tmp_path / "embeddings"
    store.mkdir()
    np.save(store / "embeddings.npy", np.ones((3, 32), dtype=np.float32))
    (store / "ids.txt").write_text("train:0\ntrain:1\ntrain:2\n")
    gallery = {"source": "embeddings", "path": str(store), "checkpoint": None, "mflops": 10, "embed_dim": 64}
    result = _invoke(tmp_path, gallery=gallery)
    assert result.exit_code == 2
    assert "gallery.embed_dim=64 set(s) the gallery model cmpnas trains" in result.text
    assert "gallery.source is 'embeddings', whose model gives its own; remove it (or set null)" in result.text
    gallery.pop("embed_dim")
    result = _invoke(tmp_path, gallery=gallery)  # the folder covers 3 images, the search needs 4,500
    assert result.exit_code == 2 and "lacks" in result.text and "cmpnas gallery embed" in result.text
    assert not (tmp_path / "mlflow.db").exists()


def test_gallery_train_refuses_a_model_cmpnas_does_not_train(tmp_path):
    path = tmp_path / "config.yaml"
    tree = tiny_tree(tmp_path, gallery={"source": "onnx", "path": str(tmp_path / "gallery.onnx"), "checkpoint": None})
    path.write_text(yaml.safe_dump(tree))
    result = CliRunner().invoke(app, ["gallery", "train", "--config", str(path)], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "gallery.source='onnx'" in text and "needs no training" in text


def test_pareto_names_a_missing_experiment_and_an_experiment_without_searches(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    missing = CliRunner().invoke(app, ["pareto", "--tracking-uri", uri, "--experiment", "nowhere"],
                                 env={"COLUMNS": "200"})
    assert missing.exit_code == 2 and "no MLflow experiment named 'nowhere'" in " ".join(missing.output.split())
    MlflowClient(tracking_uri=uri).create_experiment("empty")
    empty = CliRunner().invoke(app, ["pareto", "--tracking-uri", uri, "--experiment", "empty"], env={"COLUMNS": "200"})
    text = " ".join(empty.output.split())
    assert empty.exit_code == 2 and "experiment 'empty'" in text and "has no cmpnas search runs" in text
    unknown = CliRunner().invoke(app, ["pareto", "--tracking-uri", uri, "--experiment", "empty",
                                       "--search-run-id", "0123456789abcdef"], env={"COLUMNS": "200"})
    text = " ".join(unknown.output.split())
    assert unknown.exit_code == 2 and "--search-run-id '0123456789abcdef': no such run" in text
    client = MlflowClient(tracking_uri=uri)
    candidate = client.create_run(client.get_experiment_by_name("empty").experiment_id).info.run_id
    not_a_search = CliRunner().invoke(app, ["pareto", "--tracking-uri", uri, "--experiment", "empty",
                                            "--search-run-id", candidate], env={"COLUMNS": "200"})
    assert not_a_search.exit_code == 2 and "is not the parent run of a search" in " ".join(not_a_search.output.split())

"""The supernet end to end: `cmpnas supernet train`, the inherit modes through the driver, compatibility
of zero-shot subnets, and the errors for a supernet that is missing or belongs elsewhere."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from evaluators import RetrievalEvaluator
from orchestrator.cli import app
from orchestrator.config import validate_config
from orchestrator.search.driver import run_search
from orchestrator.setup.data import load_data
from orchestrator.setup.supernet import load_supernet_for_search
from orchestrator.supernet.job import supernet_training_settings
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import ROLE_TAG
from search_space import create_space
from search_space.supernet import ElasticSupernet, extract_subnet
from tests.conftest import tiny_tree
from workers.compatibility.bn_calibration import recalibrate_batch_norm
from workers.compatibility.supernet import train_supernet
from workers.compatibility.supernet_checkpoint import load_supernet, save_supernet
from workers.compatibility.training import TrainingRun
from workers.gallery.embeddings import compute_gallery_embeddings
from workers.gallery.model import load_gallery
from workers.storage.checkpoint import CheckpointError
from workers.training.preprocess import ModelInput, embed_images, to_model_input

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]

# Small enough for a 2-core test run: a few hundred training images, one short supernet training.
TINY_SUPERNET = {"epochs": 2, "batch_size": 32, "num_random_subnets": 1, "calibration_images": 500}
TINY_DATA = {"train_size": 1000}


def _tree(folder, gallery_dir, **sections):
    sections.setdefault("supernet", {})
    sections["supernet"] = {**TINY_SUPERNET, **sections["supernet"]}
    return tiny_tree(folder, data=TINY_DATA, gallery={"checkpoint": str(gallery_dir / "gallery.safetensors")},
                     **sections)


def _cli_args(tree: dict) -> list[str]:
    args = []
    for section, values in tree.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, dict):
                    args += [arg for sub, v in value.items() for arg in ("--set", f"{section}.{key}.{sub}={v}")]
                else:
                    args += ["--set", f"{section}.{key}={'null' if value is None else value}"]
        else:
            args += ["--set", f"{section}={values}"]
    return args


@pytest.fixture(scope="module")
def trained_supernet(gallery_dir, tmp_path_factory):
    """A compatible supernet trained by the command line, as a user would."""
    folder = tmp_path_factory.mktemp("supernet")
    tree = _tree(folder, gallery_dir)
    result = CliRunner().invoke(app, ["supernet", "train", *_cli_args(tree)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return folder, tree, result.output


@pytest.fixture(scope="module")
def gallery_embeddings(gallery_dir, trained_supernet):
    _, tree, _ = trained_supernet
    data = load_data(validate_config(tree))
    return data, compute_gallery_embeddings(load_gallery(gallery_dir / "gallery.safetensors"), data,
                                            torch.device("cpu"))


def test_supernet_training_reports_every_epoch_and_logs_checkpoint_and_curves(trained_supernet, gallery_dir):
    folder, tree, output = trained_supernet
    config = validate_config(tree)
    assert "supernet epoch 1/2" in output and "supernet epoch 2/2" in output
    checkpoint = load_supernet(config.supernet_checkpoint_path)
    assert checkpoint.metadata["space"] == "mnv3_28"
    assert checkpoint.metadata["gallery_fingerprint"] == load_gallery(gallery_dir / "gallery.safetensors").fingerprint
    assert checkpoint.info["epochs_done"] == 2 and checkpoint.info["cpu_seconds"] > 0
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`{ROLE_TAG}` = 'supernet'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.tags["supernet_fingerprint"] == checkpoint.fingerprint
    assert run.data.params["supernet.num_random_subnets"] == "1"
    for metric in ("loss", "largest_loss_bct_influence", "smallest_loss_bct_influence", "loss_distillation"):
        assert [p.step for p in tracker.client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
    assert run.data.metrics["supernet_cpu_seconds"] > 0
    artifacts = {item.path for item in tracker.client.list_artifacts(run.info.run_id, "supernet")}
    assert "supernet/supernet.safetensors" in artifacts


def _zero_shot_cross_r1(state, spec, data, gallery) -> float:
    model = extract_subnet(state, spec)
    inputs = to_model_input(data.train.images, data.mean, data.std, spec.resolution)
    recalibrate_batch_norm(model, inputs, 500)
    queries = embed_images(model, data.query.images, ModelInput(data.mean, data.std, spec.resolution))
    return RetrievalEvaluator().evaluate(queries, data.query.labels, gallery.gallery,
                                         data.gallery.labels).recall_at_1


def test_zero_shot_subnets_are_compatible_only_when_the_supernet_trained_with_compatibility_losses(
        trained_supernet, gallery_embeddings):
    _, tree, _ = trained_supernet
    config = validate_config(tree)
    data, gallery = gallery_embeddings
    space = create_space("mnv3_28", embed_dim=gallery.embed_dim, in_chans=1)
    compatible = load_supernet(config.supernet_checkpoint_path).state
    # The same training, with the candidate's own classifier as the only loss.
    settings = supernet_training_settings(config)
    settings = replace(settings, compatibility=replace(settings.compatibility, loss_weights={"own_classifier": 1.0}))
    torch.manual_seed(0)
    independent = ElasticSupernet(space)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_supernet(independent, settings, TrainingRun(data, gallery, torch.device("cpu")))
        # The two subnets the sandwich rule trains at every step; after 60 steps on 1,000 images the
        # interior of the space is far less trained (zero-shot R@1 about 20-25 here).
        specs = [space.smallest(), space.largest()]
        scores = [(_zero_shot_cross_r1(compatible, spec, data, gallery),
                   _zero_shot_cross_r1(independent.state_dict(), spec, data, gallery)) for spec in specs]
    finally:
        torch.set_num_threads(previous)
    print("zero-shot cross R@1 (compatible supernet, independent supernet):", scores)
    for with_losses, without in scores:
        assert with_losses > 40, "zero-shot subnets of the compatible supernet should retrieve from the gallery"
        assert without < 25, "without compatibility losses cross-model retrieval should be near chance (10%)"


@pytest.mark.parametrize("mode", ["inherit", "inherit_zero_shot"])
def test_inherit_modes_run_through_the_driver(trained_supernet, gallery_dir, tmp_path, mode):
    folder, tree, _ = trained_supernet
    supernet_path = validate_config(tree).supernet_checkpoint_path
    config = validate_config(_tree(tmp_path, gallery_dir, training={"mode": mode, "finetune_epochs": 1},
                                   supernet={"checkpoint": str(supernet_path)},
                                   search={"num_candidates": 2, "strategy": "random"}))
    outcome = run_search(config, Console(quiet=True))
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.data.tags["training_mode"] == mode
    assert parent.data.tags["supernet_fingerprint"] == load_supernet(supernet_path).fingerprint
    children = tracker.child_runs(outcome.parent_run_id)
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED" and run.data.params["mode"] == mode
        if mode == "inherit":
            assert run.data.metrics["final_cross_r1"] > 20  # inherited weights, one epoch on 1,000 images
        assert run.data.metrics["final_trial_cpu_seconds"] > 0
        steps = [p.step for p in tracker.client.get_metric_history(run.info.run_id, "cross_r1")]
        assert steps == ([1] if mode == "inherit" else [0])


def test_scratch_is_the_default_mode_and_recorded(finished_search):
    config, outcome, tracker, _ = finished_search
    assert config.training.mode == "scratch"
    assert tracker.client.get_run(outcome.parent_run_id).data.tags["training_mode"] == "scratch"
    assert all(run.data.params["mode"] == "scratch" for run in tracker.child_runs(outcome.parent_run_id))


def test_missing_supernet_is_refused_before_any_work(gallery_dir, tmp_path):
    tree = _tree(tmp_path, gallery_dir, training={"mode": "inherit"},
                 supernet={"checkpoint": str(tmp_path / "absent.safetensors")})
    result = CliRunner().invoke(app, ["search", *_cli_args(tree)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "supernet.checkpoint" in output and "cmpnas supernet train" in output
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("field, change", [
    ("search_space.name", {"space": "mnv3_64"}),
    ("gallery.embed_dim", {"embed_dim": 64}),
    ("gallery.checkpoint", {"gallery": "another"}),
])
def test_supernet_for_another_space_embedding_or_gallery_is_refused_naming_the_field(tmp_path, gallery_dir, field,
                                                                                      change):
    fingerprint = load_gallery(gallery_dir / "gallery.safetensors").fingerprint
    space = create_space("mnv3_28", embed_dim=128, in_chans=1)
    made_for = create_space(change.get("space", "mnv3_28"), embed_dim=change.get("embed_dim", 128), in_chans=1)
    path = tmp_path / "supernet.safetensors"
    save_supernet(path, ElasticSupernet(made_for), "0" * 64 if "gallery" in change else fingerprint)
    config = validate_config(_tree(tmp_path, gallery_dir, training={"mode": "inherit_zero_shot"},
                                   supernet={"checkpoint": str(path)}))
    with pytest.raises(CheckpointError, match=field.replace(".", r"\.")):
        load_supernet_for_search(config, space, fingerprint)


def test_mode_and_supernet_fields_are_validated_naming_the_field(tmp_path):
    from orchestrator.config import ConfigError

    with pytest.raises(ConfigError, match=r"training\.mode"):
        validate_config(tiny_tree(tmp_path, training={"mode": "warm_start"}))
    with pytest.raises(ConfigError, match=r"supernet\.num_random_subnets"):
        validate_config(tiny_tree(tmp_path, supernet={"num_random_subnets": -1}))
    config = validate_config(tiny_tree(tmp_path, training={"mode": "inherit", "finetune_epochs": 2}))
    assert config.training.trial_epochs == 2
    assert config.supernet_checkpoint_path == tmp_path / "out" / "supernet.safetensors"

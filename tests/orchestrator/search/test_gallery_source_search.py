"""A real search against precomputed gallery embeddings: no gallery-model code in the search at all.

The embeddings are the cmpnas gallery model's own, so the paragon must match the search that ran
the model itself; the gallery's identity is recorded on the parent run and in the resume state,
and a resume with another gallery is refused before anything is embedded.
"""

import json

import numpy as np
import pytest
import torch
from rich.console import Console

from orchestrator.config import validate_config
from orchestrator.search.driver import run_search
from orchestrator.search.state import SearchState
from orchestrator.setup.data import load_data
from orchestrator.setup.inputs import prepare_search_inputs
from orchestrator.tracking.client import SearchTracker
from tests.conftest import tiny_tree
from workers.gallery.model import load_gallery
from workers.gallery.sources import GallerySourceError
from workers.gallery.sources.cmpnas_checkpoint import CmpnasGalleryModel
from workers.gallery.sources.precomputed import EMBEDDINGS_FILE, IDS_FILE

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]
PARAGON_MFLOPS = 61.5


@pytest.fixture(scope="module")
def embeddings_search(gallery_dir, finished_search, tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings-search")
    reference_config = finished_search[0]
    data = load_data(reference_config)
    model = CmpnasGalleryModel(load_gallery(gallery_dir / "gallery.safetensors"))
    store = folder / "gallery-embeddings"
    store.mkdir()
    splits = (data.train, data.query, data.gallery)
    np.save(store / EMBEDDINGS_FILE,
            np.concatenate([model.embed(s.images, list(s.ids), torch.device("cpu")) for s in splits]))
    (store / IDS_FILE).write_text("\n".join(i for s in splits for i in s.ids) + "\n")
    config = validate_config(tiny_tree(
        folder, data={"train_size": 1500},
        gallery={"checkpoint": None, "source": "embeddings", "path": str(store), "mflops": PARAGON_MFLOPS},
        training={"epochs": 1}, search={"num_candidates": 2}))
    outcome = run_search(config, Console(quiet=True))
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    return config, outcome, tracker, model


def test_the_paragon_and_identity_come_from_the_embeddings(embeddings_search, finished_search):
    config, outcome, tracker, model = embeddings_search
    parent = tracker.client.get_run(outcome.parent_run_id)
    reference = finished_search[2].client.get_run(finished_search[1].parent_run_id)
    for metric in ("paragon_r1", "paragon_r5", "paragon_map"):
        assert parent.data.metrics[metric] == pytest.approx(reference.data.metrics[metric], abs=1e-3), metric
    assert parent.data.metrics["paragon_mflops"] == pytest.approx(PARAGON_MFLOPS)
    assert parent.data.metrics["gallery_images_embedded"] == 0  # looked up by id, nothing embedded
    assert parent.data.tags["gallery_source"] == "embeddings"
    assert parent.data.params["paragon_flops_convention"] == "as configured in gallery.mflops"
    assert parent.data.params["gallery_classifier_kind"] == "prototypes"
    assert parent.data.params["gallery_embed_dim"] == "128"
    # The fields of a gallery model cmpnas trains are not this search's: neither params nor config.json list them.
    trained_only = {"gallery.backbone", "gallery.embed_dim", "gallery.epochs", "gallery.stem_stride", "gallery.lr",
                    "gallery.batch_size", "gallery.weight_decay", "gallery.patience"}
    assert not trained_only & set(parent.data.params) and "gallery.source" in parent.data.params
    assert "epochs" not in json.loads((outcome.output_dir / "config.json").read_text())["gallery"]
    state = SearchState.load(config.output_dir)
    assert state.gallery["source"] == "embeddings" and state.gallery["fingerprint"] == state.gallery_fingerprint
    assert parent.data.tags["gallery_fingerprint"] == state.gallery_fingerprint != model.fingerprint
    recorded = json.loads((outcome.output_dir / "gallery.json").read_text())
    assert recorded == state.gallery
    children = tracker.client.search_runs([tracker.experiment_id],
                                          filter_string=f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'")
    # Candidates trained against the looked-up embeddings (one epoch on 1,500 images: accuracy is not the point).
    assert len(children) == 2 and all("final_cross_r1" in c.data.metrics for c in children)


def test_a_resume_with_another_gallery_is_refused_before_embedding(embeddings_search):
    config = embeddings_search[0]
    with pytest.raises(GallerySourceError, match="not the one this search started with"):
        prepare_search_inputs(config, lambda message: None, expected_gallery_fingerprint="0" * 64)


def test_set_up_without_a_paragon_cost_is_left_to_the_search(embeddings_search):
    """Shared set-up (also the supernet job's) does not ask for gallery.mflops; only a search refuses it."""
    from orchestrator.search.driver import run_search

    config = embeddings_search[0]
    no_cost = config.model_copy(update={"gallery": config.gallery.model_copy(update={"mflops": None}),
                                        "output_dir": config.output_dir + "-no-cost"})
    inputs = prepare_search_inputs(no_cost, lambda message: None)
    assert inputs.gallery_model.source == "embeddings"
    with pytest.raises(GallerySourceError, match="set gallery.mflops"):
        run_search(no_cost, Console(quiet=True))
    assert not SearchState.path_in(no_cost.output_dir).exists()  # the refused start left the folder free

"""Export of a tiny real search: packages, checks, registry, verify-compat, use without cmpnas."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.search_inputs import load_data
from orchestrator.export import ExportError, ExportRequest, export_candidates, verify_compatibility
from orchestrator.export.package import MANIFEST_FILE, ONNX_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE
from orchestrator.tags import PARENT_RUN_TAG
from workers.gallery import load_gallery, save_gallery
from workers.preprocess import embed_images

pytestmark = pytest.mark.integration
MODEL_NAME = "cmpnas-test-query"
REPO = Path(__file__).resolve().parents[2]


def _request(config, output_dir, **changes):
    fields = {"tracking_uri": config.tracking.uri, "experiment": config.tracking.experiment,
              "model_name": MODEL_NAME, "output_dir": output_dir, **changes}
    return ExportRequest(**fields)


def data_mean(config):
    return load_data(config).mean


def data_std(config):
    return load_data(config).std


def _store_snapshot(tracker):
    runs = tracker.client.search_runs([tracker.experiment_id])
    versions = tracker.client.search_model_versions(f"name='{MODEL_NAME}'")
    artifacts = {run.info.run_id: sorted(a.path for a in tracker.client.list_artifacts(run.info.run_id)) for run in runs}
    return sorted((run.info.run_id, run.info.status) for run in runs), len(versions), artifacts


@pytest.fixture(scope="module")
def exported(finished_search, tmp_path_factory):
    config, outcome, tracker, _ = finished_search
    models = export_candidates(_request(config, tmp_path_factory.mktemp("export")), log=lambda message: None)
    return config, outcome, tracker, models


@pytest.fixture(scope="module")
def gallery_side(exported, gallery_dir):
    config = exported[0]
    data = load_data(config)
    gallery = load_gallery(gallery_dir / "gallery.safetensors")
    embeddings = embed_images(gallery.model, data.gallery.images, gallery.mean, gallery.std, data.image_size)
    return data, embeddings


def test_the_pareto_set_is_exported_with_a_complete_manifest(exported, gallery_dir):
    config, outcome, tracker, models = exported
    assert sorted(m.run_id for m in models) == sorted(row.run_id for row in outcome.report.front)
    fingerprint = load_gallery(gallery_dir / "gallery.safetensors").fingerprint
    for model in models:
        assert {MANIFEST_FILE, ONNX_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE} <= {p.name for p in model.folder.iterdir()}
        manifest = json.loads((model.folder / MANIFEST_FILE).read_text())
        run = tracker.client.get_run(model.run_id)
        assert manifest["gallery"] == {"source": "cmpnas", "model": "resnet10t", "fingerprint": fingerprint,
                                       "embed_dim": config.gallery.embed_dim,
                                       "input": {"size": 28, "channels": 1, "mean": list(data_mean(config)),
                                                 "std": list(data_std(config))}}
        assert manifest["embedding"]["dim"] == config.gallery.embed_dim and manifest["embedding"]["normalization"] == "l2"
        assert manifest["input"]["height"] == 28 and manifest["input"]["channels"] == 1
        assert manifest["metrics"]["cross_model"]["r1"] == run.data.metrics["final_cross_r1"]
        assert manifest["cost"]["mflops"] == run.data.metrics["final_mflops"]
        assert "multiply-add" in manifest["cost"]["flops_convention"]
        assert manifest["mlflow"] == {"candidate_run_id": model.run_id, "search_run_id": outcome.parent_run_id}
        assert max(model.parity.values()) <= 1e-4


def test_the_registry_holds_one_version_per_exported_model_with_its_manifest(exported, tmp_path):
    _, _, tracker, models = exported
    versions = tracker.client.search_model_versions(f"name='{MODEL_NAME}'")
    assert sorted(v.run_id for v in versions) == sorted(m.run_id for m in models)
    for model in models:
        version = tracker.client.get_model_version_by_alias(MODEL_NAME, model.alias)
        assert version.run_id == model.run_id and re.fullmatch(r"pareto-\d+kflops", model.alias)
        assert version.tags["gallery_fingerprint"] == model.manifest["gallery"]["fingerprint"]
        local = Path(tracker.client.download_artifacts(model.run_id, "export", str(tmp_path / model.run_id)))
        assert json.loads((local / MANIFEST_FILE).read_text()) == model.manifest


FRESH_PROCESS = """
import json, sys
import numpy as np, onnxruntime, torch
folder, arrays = sys.argv[1], np.load(sys.argv[2])
manifest = json.load(open(folder + "/compatibility.json"))
images = arrays["query_images"].astype(np.float32) / 255.0
session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
embedded = {"onnx": session.run(None, {"images": images})[0],
            "torchscript": torch.jit.load(folder + "/model.torchscript.pt")(torch.from_numpy(images)).detach().numpy()}
def recall_at_1(queries):
    nearest = (queries @ arrays["gallery_embeddings"].T).argmax(axis=1)
    return 100.0 * float(np.mean(arrays["gallery_labels"][nearest] == arrays["query_labels"]))
ours = {"orchestrator", "workers", "search_space", "evaluators", "cmpnas"}
assert not ours & {name.split(".")[0] for name in sys.modules}, "cmpnas code was imported"
print(json.dumps({name: recall_at_1(q) for name, q in embedded.items()}))
"""


def test_exports_reproduce_the_recorded_recall_in_a_process_without_cmpnas(exported, gallery_side, tmp_path):
    data, gallery_embeddings = gallery_side
    arrays = tmp_path / "arrays.npz"
    np.savez(arrays, query_images=data.query.images, query_labels=data.query.labels,
             gallery_embeddings=gallery_embeddings, gallery_labels=data.gallery.labels)
    for model in exported[3]:
        result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(model.folder), str(arrays)],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        recalls = json.loads(result.stdout.strip().splitlines()[-1])
        recorded = model.manifest["metrics"]["cross_model"]["r1"]
        one_query = 100.0 / len(data.query) + 1e-9
        assert abs(recalls["onnx"] - recorded) <= one_query and abs(recalls["torchscript"] - recorded) <= one_query


def test_the_documented_onnxruntime_and_faiss_snippet_runs(exported, gallery_side, tmp_path):
    data, gallery_embeddings = gallery_side
    snippet = re.search(r"```python\n(.*?)```", (REPO / "docs" / "export.md").read_text(), re.S).group(1)
    np.save(tmp_path / "gallery.npy", gallery_embeddings)
    np.save(tmp_path / "queries.npy", data.query.images)
    model = exported[3][0]
    env = {"EXPORT_DIR": str(model.folder), "GALLERY_EMBEDDINGS": str(tmp_path / "gallery.npy"),
           "QUERY_IMAGES": str(tmp_path / "queries.npy"), "NEIGHBOURS_OUT": str(tmp_path / "neighbours.npy")}
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**__import__("os").environ, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    neighbours = np.load(tmp_path / "neighbours.npy")
    assert neighbours.shape == (len(data.query), 5)
    r1 = 100.0 * np.mean(data.gallery.labels[neighbours[:, 0]] == data.query.labels)
    assert abs(r1 - model.manifest["metrics"]["cross_model"]["r1"]) <= 100.0 / len(data.query) + 1e-9


def test_budget_export_picks_the_best_candidate_within_it(exported, tmp_path):
    config, outcome, tracker, _ = exported
    children = tracker.child_runs(outcome.parent_run_id)
    budget = max(run.data.metrics["final_mflops"] for run in children)
    (model,) = export_candidates(_request(config, tmp_path, max_mflops=budget, register=False), log=lambda m: None)
    best = max(children, key=lambda run: run.data.metrics["final_cross_map"])
    assert model.run_id == best.info.run_id and model.version is None


def test_failed_exports_are_clear_and_change_nothing_in_the_store(exported, gallery_dir, tmp_path):
    config, outcome, tracker, _ = exported
    before = _store_snapshot(tracker)
    with pytest.raises(ExportError, match="does not exist"):
        export_candidates(_request(config, tmp_path / "a", run_id="0" * 32), log=lambda m: None)
    with pytest.raises(ExportError, match="is not a cmpnas candidate run"):
        export_candidates(_request(config, tmp_path / "b", run_id=outcome.parent_run_id), log=lambda m: None)
    other = _other_gallery(gallery_dir, tmp_path)
    with pytest.raises(ExportError, match="fingerprint"):
        export_candidates(_request(config, tmp_path / "c", gallery_path=other), log=lambda m: None)
    assert _store_snapshot(tracker) == before
    assert not (tmp_path / "c").exists()


def test_export_command_reports_a_missing_run_clearly(exported):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    config = exported[0]
    result = CliRunner().invoke(app, ["export", "--tracking-uri", config.tracking.uri, "--experiment",
                                      config.tracking.experiment, "--run-id", "f" * 32], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())


def _other_gallery(gallery_dir, tmp_path):
    gallery = load_gallery(gallery_dir / "gallery.safetensors")
    with torch.no_grad():
        gallery.model.embedding.weight.mul_(1.01)
    path = tmp_path / "other-gallery.safetensors"
    save_gallery(path, gallery.model, gallery.mean, gallery.std, gallery.info)
    return path


def test_verify_compat_recomputes_and_refuses_mismatched_or_corrupt_inputs(exported, gallery_dir, tmp_path):
    import shutil

    config, _, _, models = exported
    model = models[0]
    manifest, metrics = verify_compatibility(model.folder, gallery_dir / "gallery.safetensors", config)
    assert abs(metrics.recall_at_1 - manifest["metrics"]["cross_model"]["r1"]) <= 100.0 / metrics.num_queries + 1e-9
    other = _other_gallery(gallery_dir, tmp_path)
    with pytest.raises(ExportError, match="--force"):
        verify_compatibility(model.folder, other, config)
    _, forced = verify_compatibility(model.folder, other, config, force=True)
    assert forced.num_queries == metrics.num_queries
    corrupt = tmp_path / "corrupt"
    shutil.copytree(model.folder, corrupt)
    raw = bytearray((corrupt / ONNX_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (corrupt / ONNX_FILE).write_bytes(bytes(raw))
    with pytest.raises(ExportError, match="corrupt"):
        verify_compatibility(corrupt, gallery_dir / "gallery.safetensors", config)
    other_size = tmp_path / "other-size"
    shutil.copytree(model.folder, other_size)
    manifest = json.loads((other_size / MANIFEST_FILE).read_text())
    manifest["input"].update(height=64, width=64)
    (other_size / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="the model expects 1-channel 64px"):
        verify_compatibility(other_size, gallery_dir / "gallery.safetensors", config)


def test_verify_compat_refuses_a_gallery_of_another_embedding_dimension_even_with_force(exported, tmp_path):
    from workers.gallery import GalleryArchitecture, GalleryEmbeddingNet, save_gallery

    config, _, _, models = exported
    narrow = tmp_path / "narrow.safetensors"
    arch = GalleryArchitecture(backbone="resnet10t", embed_dim=16, num_classes=10, in_chans=1, image_size=28)
    save_gallery(narrow, GalleryEmbeddingNet(arch), (0.5,), (0.25,), {})
    with pytest.raises(ExportError, match=r"embeds into 16 dimensions, the query model .* into 128"):
        verify_compatibility(models[0].folder, narrow, config, force=True)


def test_export_candidates_belong_to_the_search(exported):
    _, outcome, tracker, models = exported
    for model in models:
        assert tracker.client.get_run(model.run_id).data.tags[PARENT_RUN_TAG] == outcome.parent_run_id


def test_gallery_embed_and_query_reproduce_the_recorded_cross_model_recall(exported, tmp_path):
    """The visual-search loop without code: the gallery split embedded by `cmpnas gallery embed`, the
    query split's images (as files) searched with `cmpnas query`; the top-1 ids give the R@1 the
    search recorded for the candidate."""
    from PIL import Image

    from orchestrator.gallery_embed import GalleryEmbedRequest, embed_configured_gallery
    from orchestrator.query_service import query_images

    config, _, tracker, models = exported
    model = models[0]
    embedded = embed_configured_gallery(config, GalleryEmbedRequest(output_dir=tmp_path / "index", splits=("gallery",)),
                                        log=lambda message: None)
    data = load_data(config)
    assert embedded.count == len(data.gallery)
    queries = tmp_path / "queries"
    queries.mkdir()
    paths = []
    for index, image in enumerate(data.query.images):
        path = queries / f"{index:05d}.png"
        Image.fromarray(image[0]).save(path)  # lossless: the same pixels the search evaluated
        paths.append(path)
    results = query_images(model.folder, tmp_path / "index", paths, k=1)
    label_of = dict(zip(data.gallery.ids, data.gallery.labels))
    hits = [label_of[result.matches[0].id] == label for result, label in zip(results, data.query.labels)]
    recall_at_1 = 100.0 * np.mean(hits)
    recorded = tracker.client.get_run(model.run_id).data.metrics["final_cross_r1"]
    # ONNX against PyTorch differs by < 1e-4, which may flip a near-tie: one query at most.
    assert abs(recall_at_1 - recorded) <= 100.0 / len(paths) + 1e-9, (recall_at_1, recorded)


def test_verify_compat_accepts_a_gallery_model_of_another_source(exported, gallery_dir, tmp_path):
    """The same gallery model as ONNX (`cmpnas gallery export`), checked with gallery.source onnx: another
    file, so another fingerprint (refused without --force), and the same cross-model recall."""
    from orchestrator.gallery_export import export_configured_gallery

    config, _, _, models = exported
    model = models[0]
    onnx_path = export_configured_gallery(config, tmp_path / "gallery-onnx").onnx_path
    as_onnx = config.model_copy(update={"gallery": config.gallery.model_copy(
        update={"source": "onnx", "checkpoint": None, "path": str(onnx_path)})})
    with pytest.raises(ExportError, match="--force"):
        verify_compatibility(model.folder, onnx_path, as_onnx)
    _, through_onnx = verify_compatibility(model.folder, onnx_path, as_onnx, force=True)
    _, through_checkpoint = verify_compatibility(model.folder, gallery_dir / "gallery.safetensors", config)
    assert through_onnx.recall_at_1 == pytest.approx(through_checkpoint.recall_at_1, abs=100.0 / through_onnx.num_queries)

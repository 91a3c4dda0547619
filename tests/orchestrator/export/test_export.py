"""Export of a tiny real search: packages, checks, registry, verify-compat, use without cmpnas."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.export import ExportError, ExportRequest, VerifyOptions, export_candidates, verify_compatibility
from orchestrator.export.package import GALLERY_FILE, MANIFEST_FILE, ONNX_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE
from orchestrator.setup.data import load_data
from orchestrator.tracking.tags import PARENT_RUN_TAG, ROLE_CANDIDATE, ROLE_FINAL_TRAINING
from workers.gallery.model import load_gallery, save_gallery
from workers.training.preprocess import ModelInput, embed_images

pytestmark = pytest.mark.integration
MODEL_NAME = "cmpnas-test-query"
REPO = Path(__file__).resolve().parents[3]


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
    embeddings = embed_images(gallery.model, data.gallery.images, ModelInput(gallery.mean, gallery.std, data.image_size))
    return data, embeddings


def test_the_pareto_set_is_exported_with_a_complete_manifest(exported, gallery_dir):
    config, outcome, tracker, models = exported
    assert sorted(m.run_id for m in models) == sorted(row.run_id for row in outcome.report.front)
    fingerprint = load_gallery(gallery_dir / "gallery.safetensors").fingerprint
    for model in models:
        assert {MANIFEST_FILE, ONNX_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE} <= {p.name for p in model.folder.iterdir()}
        manifest = json.loads((model.folder / MANIFEST_FILE).read_text())
        run = tracker.client.get_run(model.run_id)
        gallery = {"source": "cmpnas", "model": "resnet10t", "fingerprint": fingerprint,
                   "embed_dim": config.gallery.embed_dim,
                   "input": {"size": 28, "channels": 1, "mean": list(data_mean(config)), "std": list(data_std(config))}}
        location = str((gallery_dir / "gallery.safetensors").resolve())
        assert manifest["gallery"] == {**gallery, "location": location}
        # The gallery model is linked (identity and location), never copied into the export.
        assert json.loads((model.folder / GALLERY_FILE).read_text()) == {
            **gallery, "location": location, "search_run_id": outcome.parent_run_id}
        assert GALLERY_FILE in manifest["files"] and not list(model.folder.glob("*gallery*.safetensors"))
        # The data it was checked on: the search's, with the digests of the search's dataset inputs.
        recorded = {{tag.key: tag.value for tag in item.tags}["mlflow.data.context"]: item.dataset.digest
                    for item in tracker.client.get_run(outcome.parent_run_id).inputs.dataset_inputs}
        assert manifest["data"]["digests"] == recorded and set(recorded) == {"train", "query", "gallery"}
        assert manifest["data"]["sizes"] == {"train": 1500, "query": 300, "gallery": 1200}
        assert (manifest["data"]["source"], manifest["data"]["seed"], manifest["data"]["root"]) == ("fashion_mnist", 0, None)
        assert manifest["data"]["config"]["query_size"] == 300
        assert manifest["embedding"]["dim"] == config.gallery.embed_dim and manifest["embedding"]["normalization"] == "l2"
        assert manifest["input"]["height"] == 28 and manifest["input"]["channels"] == 1
        assert manifest["metrics"]["cross_model"]["r1"] == run.data.metrics["final_cross_r1"]
        assert manifest["cost"]["mflops"] == run.data.metrics["final_mflops"]
        assert "multiply-add" in manifest["cost"]["flops_convention"]
        assert manifest["mlflow"] == {"candidate_run_id": model.run_id, "search_run_id": outcome.parent_run_id}
        assert max(model.parity.values()) <= 1e-4


def test_the_registry_holds_one_version_per_exported_model_with_its_manifest(exported, gallery_dir, tmp_path):
    _, _, tracker, models = exported
    versions = tracker.client.search_model_versions(f"name='{MODEL_NAME}'")
    assert sorted(v.run_id for v in versions) == sorted(m.run_id for m in models)
    for model in models:
        version = tracker.client.get_model_version_by_alias(MODEL_NAME, model.alias)
        assert version.run_id == model.run_id and re.fullmatch(r"pareto-\d+kflops", model.alias)
        # The registered query model leads back to its gallery model: fingerprint, source, location.
        assert version.tags["gallery_fingerprint"] == model.manifest["gallery"]["fingerprint"]
        assert version.tags["gallery_source"] == "cmpnas"
        assert version.tags["gallery_location"] == str((gallery_dir / "gallery.safetensors").resolve())
        local = Path(tracker.client.download_artifacts(model.run_id, "export", str(tmp_path / model.run_id)))
        assert json.loads((local / MANIFEST_FILE).read_text()) == model.manifest
        assert (local / GALLERY_FILE).read_text() == (model.folder / GALLERY_FILE).read_text()
        # Linked, not uploaded: nothing of the export is the gallery model (MBs even for the tiny one).
        assert max(path.stat().st_size for path in local.iterdir()) < (gallery_dir / "gallery.safetensors").stat().st_size


def test_each_export_is_an_onnx_model_of_its_candidate_run_and_the_registry_version_points_at_it(exported, tmp_path):
    import mlflow
    from mlflow.models import Model

    from orchestrator.export.checks import embed_with_onnx, onnx_session
    from orchestrator.tracking.tags import MODEL_VERSIONS_TAG

    _, _, tracker, models = exported
    for model in models:
        logged = tracker.client.get_logged_model(model.model_id)
        assert logged.source_run_id == model.run_id and logged.name == model.arch_id
        assert str(logged.status) == "READY" and logged.tags["gallery_fingerprint"] == model.manifest["gallery"]["fingerprint"]
        outputs = tracker.client.get_run(model.run_id).outputs.model_outputs
        assert [output.model_id for output in outputs] == [model.model_id]
        version = tracker.client.get_model_version_by_alias(MODEL_NAME, model.alias)
        assert version.source == f"models:/{model.model_id}" and version.run_id == model.run_id
        assert json.loads(logged.tags[MODEL_VERSIONS_TAG]) == [{"name": MODEL_NAME, "version": str(version.version)}]
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location,
                                                         dst_path=str(tmp_path / model.arch_id)))
        described = Model.load(str(local / "MLmodel"))
        assert {"onnx", "python_function"} <= set(described.flavors)
        assert (described.run_id, described.model_id) == (model.run_id, model.model_id)
        (images,) = described.signature.inputs.inputs
        assert images.name == "images" and images.shape == (-1, 1, 28, 28)
        assert json.loads((local / MANIFEST_FILE).read_text()) == model.manifest
        assert json.loads((local / GALLERY_FILE).read_text())["fingerprint"] == model.manifest["gallery"]["fingerprint"]
        assert described.metadata["gallery_location"] == model.manifest["gallery"]["location"]
        assert described.metadata["gallery_source"] == "cmpnas" and logged.tags["gallery_source"] == "cmpnas"
        # The MLflow model answers as the export does.
        batch = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
        served = mlflow.pyfunc.load_model(str(local)).predict(batch)["embeddings"]
        assert np.abs(served - embed_with_onnx(onnx_session(model.folder), batch)).max() <= 1e-5


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


def test_budget_export_picks_the_candidate_the_budget_sweep_would(exported, tmp_path):
    from orchestrator.results.budget import best_per_budget
    from orchestrator.results.front import collect_report

    config, outcome, tracker, _ = exported
    children = tracker.child_runs(outcome.parent_run_id)
    budget = max(run.data.metrics["final_mflops"] for run in children)
    (model,) = export_candidates(_request(config, tmp_path, max_mflops=budget, register=False), log=lambda m: None)
    (pick,) = best_per_budget(collect_report(tracker, outcome.parent_run_id), [budget])
    metric = tracker.client.get_run(outcome.parent_run_id).data.params["search.metric"]
    best = max(children, key=lambda run: run.data.metrics[f"final_{metric}"])
    assert model.run_id == pick.best.run_id == best.info.run_id and model.version is None and model.model_id is None


def test_failed_exports_are_clear_and_change_nothing_in_the_store(exported, gallery_dir, tmp_path):
    config, outcome, tracker, _ = exported
    before = _store_snapshot(tracker)
    with pytest.raises(ExportError, match="does not exist"):
        export_candidates(_request(config, tmp_path / "a", candidate_run_id="0" * 32), log=lambda m: None)
    with pytest.raises(ExportError, match="is not a cmpnas candidate run"):
        export_candidates(_request(config, tmp_path / "b", candidate_run_id=outcome.parent_run_id), log=lambda m: None)
    other = _other_gallery(gallery_dir, tmp_path)
    with pytest.raises(ExportError, match="fingerprint"):
        export_candidates(_request(config, tmp_path / "c", gallery_path=other), log=lambda m: None)
    assert _store_snapshot(tracker) == before
    assert not (tmp_path / "c").exists()


def test_an_export_holds_its_folder_and_a_rerun_replaces_in_place(exported, tmp_path):
    """Export into a folder another export holds: refused at once. A rerun into a folder with an
    earlier export and a crash's leftovers: the candidate is replaced whole, the leftovers removed."""
    from orchestrator.common.output_lock import LOCK_FILE, OutputDirLockedError

    config, _, tracker, models = exported
    folder = tmp_path / "export"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from orchestrator.common.output_lock import locked_output_dir\n"
         f"with locked_output_dir({str(folder)!r}, 'cmpnas export'):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    one = _request(config, folder, candidate_run_id=models[0].run_id, register=False)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirLockedError, match=f"cmpnas export, pid {holder.pid}"):
            export_candidates(one, log=lambda message: None)
    finally:
        holder.kill()
        holder.wait()
    first = export_candidates(one, log=lambda message: None)[0]
    (folder / ".staging-killed" / "half").mkdir(parents=True)  # what a killed export leaves
    (first.folder / "stale.txt").write_text("from the earlier export")
    again = export_candidates(one, log=lambda message: None)[0]
    assert again.folder == first.folder and not (again.folder / "stale.txt").exists()
    assert sorted(path.name for path in folder.iterdir()) == [LOCK_FILE, first.arch_id]


def test_export_command_reports_a_missing_run_clearly(exported):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    config = exported[0]
    result = CliRunner().invoke(app, ["export", "--tracking-uri", config.tracking.uri, "--experiment",
                                      config.tracking.experiment, "--candidate-run-id", "f" * 32], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())
    # The old name still works, saying the new one once.
    old = CliRunner().invoke(app, ["export", "--tracking-uri", config.tracking.uri, "--experiment",
                                   config.tracking.experiment, "--run-id", "f" * 32], env={"COLUMNS": "200"})
    assert old.exit_code == 2 and "does not exist" in " ".join(old.output.split())
    assert old.output.count("use --candidate-run-id") == 1


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
    _, forced = verify_compatibility(model.folder, other, config, VerifyOptions(force=True))
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
    from workers.gallery.model import GalleryArchitecture, GalleryEmbeddingNet, save_gallery

    config, _, _, models = exported
    narrow = tmp_path / "narrow.safetensors"
    arch = GalleryArchitecture(backbone="resnet10t", embed_dim=16, num_classes=10, in_chans=1, image_size=28)
    save_gallery(narrow, GalleryEmbeddingNet(arch), (0.5,), (0.25,), {})
    with pytest.raises(ExportError, match=r"embeds into 16 dimensions, the query model .* into 128"):
        verify_compatibility(models[0].folder, narrow, config, VerifyOptions(force=True))


def test_export_candidates_belong_to_the_search(exported):
    _, outcome, tracker, models = exported
    for model in models:
        assert tracker.client.get_run(model.run_id).data.tags[PARENT_RUN_TAG] == outcome.parent_run_id


def test_gallery_embed_and_query_reproduce_the_recorded_cross_model_recall(exported, tmp_path):
    """The visual-search loop without code: the gallery split embedded by `cmpnas gallery embed`, the
    query split's images (as files) searched with `cmpnas query`; the top-1 ids give the R@1 the
    search recorded for the candidate."""
    from PIL import Image

    from orchestrator.serving.embed import GalleryEmbedRequest, embed_configured_gallery
    from orchestrator.serving.query import query_images

    config, _, tracker, models = exported
    model = models[0]
    embedded = embed_configured_gallery(config, GalleryEmbedRequest(output_dir=tmp_path / "index", splits=("gallery",)))
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
    from orchestrator.export.gallery_model import export_configured_gallery

    config, _, _, models = exported
    model = models[0]
    onnx_path = export_configured_gallery(config, tmp_path / "gallery-onnx").onnx_path
    as_onnx = config.model_copy(update={"gallery": config.gallery.model_copy(
        update={"source": "onnx", "checkpoint": None, "path": str(onnx_path)})})
    with pytest.raises(ExportError, match="--force"):
        verify_compatibility(model.folder, onnx_path, as_onnx)
    _, through_onnx = verify_compatibility(model.folder, onnx_path, as_onnx, VerifyOptions(force=True))
    _, through_checkpoint = verify_compatibility(model.folder, gallery_dir / "gallery.safetensors", config)
    assert through_onnx.recall_at_1 == pytest.approx(through_checkpoint.recall_at_1, abs=100.0 / through_onnx.num_queries)


# -- the CLI seams: run ids, the data export and verify-compat measure on, one budget rule --------------

FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                       "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def cli_run(monkeypatch):
    """The CLI, its console wide enough that no line it prints is wrapped."""
    from typer.testing import CliRunner

    from orchestrator import cli

    monkeypatch.setattr(cli.console, "width", 1000)
    return lambda *args: CliRunner().invoke(cli.app, [str(arg) for arg in args], env={"COLUMNS": "200"})


def _fashion_mnist_copy(folder, relabel=False):
    """The searched Fashion-MNIST files under another root (links); ``relabel``: other data of the same
    shape, every label moved to the next class (the images the same, so only the digests tell)."""
    import gzip

    from workers.datasets.fashion_mnist import locate

    source = locate(None, download=False)  # where the search found it
    folder.mkdir(parents=True)
    for name in FASHION_MNIST_FILES:
        if relabel and "labels" in name:
            raw = bytearray(gzip.decompress((source / name).read_bytes()))
            raw[8:] = bytes((label + 1) % 10 for label in raw[8:])
            (folder / name).write_bytes(gzip.compress(bytes(raw), compresslevel=1))
        else:
            (folder / name).symlink_to(source / name)
    return folder


def _search_args(config):
    return ["--tracking-uri", config.tracking.uri, "--experiment", config.tracking.experiment]


def test_pareto_names_the_search_run_and_shows_candidate_run_ids_that_export_takes(exported, tmp_path, cli_run):
    """`pareto --search-run-id` (old `--run-id` with a one-line notice); its run id column holds what
    `export --candidate-run-id` accepts; export reads the data from where `--set data.root` says and
    says so in one line."""
    config, outcome, tracker, _ = exported
    shown = cli_run("pareto", *_search_args(config), "--search-run-id", outcome.parent_run_id, "--all")
    assert shown.exit_code == 0, shown.output
    assert "run id" in shown.output
    for row in outcome.report.candidates:
        assert row.run_id[:12] in shown.output and row.run_id not in shown.output
    old = cli_run("pareto", *_search_args(config), "--run-id", outcome.parent_run_id)
    assert old.exit_code == 0 and old.output.count("use --search-run-id") == 1
    assert cli_run("pareto", *_search_args(config), "--run-id", "x", "--search-run-id", "y").exit_code == 2

    row = outcome.report.front[0]
    root = _fashion_mnist_copy(tmp_path / "elsewhere")
    result = cli_run("export", *_search_args(config), "--candidate-run-id", row.run_id[:12], "--no-register",
                  "--output", tmp_path / "out", "--set", f"data.root={root}")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"data: fashion_mnist at {root.resolve()}; train 1500, query 300, gallery 1200 images" in text
    manifest = json.loads((tmp_path / "out" / row.arch_id / MANIFEST_FILE).read_text())
    assert manifest["mlflow"]["candidate_run_id"] == row.run_id
    assert manifest["data"]["root"] == str(root.resolve()) and manifest["data"]["config"]["root"] == str(root)
    assert manifest["data"]["digests"] == exported[3][0].manifest["data"]["digests"]


def test_candidate_run_id_prefixes_must_be_unique_and_long_enough():
    from types import SimpleNamespace

    from orchestrator.export.selection import get_candidate_run

    ids = ["abcdef01" + "0" * 24, "abcdef02" + "0" * 24, "f1a1" + "0" * 28]
    roles = {ids[0]: ROLE_CANDIDATE, ids[1]: ROLE_CANDIDATE, ids[2]: ROLE_FINAL_TRAINING}
    runs = [SimpleNamespace(info=SimpleNamespace(run_id=run_id)) for run_id in ids]
    page = type("Page", (list,), {"token": None})
    client = SimpleNamespace(search_runs=lambda experiments, filter_string, **kwargs: page(
        run for run in runs if filter_string.endswith(f"'{roles[run.info.run_id]}'")))
    tracker = SimpleNamespace(client=client, experiment_id="1", tracking_uri="sqlite:///x.db")
    assert get_candidate_run(tracker, "ABCDEF02").info.run_id == ids[1]
    assert get_candidate_run(tracker, "f1a100").info.run_id == ids[2]  # a final training exports its model too
    with pytest.raises(ExportError, match="2 candidate runs start with 'abcdef0'"):
        get_candidate_run(tracker, "abcdef0")
    with pytest.raises(ExportError, match="at least 6 hex digits"):
        get_candidate_run(tracker, "abc")
    with pytest.raises(ExportError, match="no candidate run id of the experiment starts with 'fedcba'"):
        get_candidate_run(tracker, "fedcba")


def test_export_takes_only_data_location_overrides_and_only_the_searched_data(exported, tmp_path, cli_run):
    config, outcome, tracker, _ = exported
    for assignment, named in (("data.query_size=10", "--set data.query_size"), ("data.seed=1", "--set data.seed"),
                              ("training.epochs=5", "--set training.epochs"), ("gallery.path=x", "--gallery")):
        result = cli_run("export", *_search_args(config), "--no-register", "--output", tmp_path / "out",
                      "--set", assignment)
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and named in text, text
    assert "would change what is evaluated" in " ".join(
        cli_run("export", *_search_args(config), "--set", "data.protocol=open_set").output.split())
    # Another data set of the same shape at the overridden root: refused before anything is written.
    before = _store_snapshot(tracker)
    other = _fashion_mnist_copy(tmp_path / "relabelled", relabel=True)
    with pytest.raises(ExportError, match=r"not the data search .* split\(s\) gallery .*query .*train"):
        export_candidates(_request(config, tmp_path / "x", data_overrides=(f"data.root={other}",)), log=lambda m: None)
    assert _store_snapshot(tracker) == before and not (tmp_path / "x").exists()


def test_verify_compat_measures_on_the_recorded_data_or_refuses_other_data(exported, gallery_dir, tmp_path, cli_run):
    """Without --config: the data the export recorded (the quickstart default would be 2000 queries
    against 8000 gallery images); with a --config of other same-shape data: refused unless --force;
    an export that records no data: refused without --config."""
    import shutil

    import yaml

    from orchestrator.config import validate_config

    config, _, _, models = exported
    model = models[0]
    gallery = gallery_dir / "gallery.safetensors"
    result = cli_run("verify-compat", "--query-model", model.folder, "--gallery", gallery)
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    assert "data: fashion_mnist at its standard place (no data.root); train 1500, query 300, gallery 1200" in text
    assert "on 300 queries against 1200 gallery images" in text
    measured = float(re.search(r"cross-model R@1 ([\d.]+)", text).group(1))
    assert abs(measured - model.manifest["metrics"]["cross_model"]["r1"]) <= 100.0 / 300 + 0.01
    assert "data.gallery_size" in " ".join(cli_run("verify-compat", "--query-model", model.folder, "--gallery", gallery,
                                                "--set", "data.gallery_size=100").output.split())

    tree = config.model_dump(mode="json")
    tree["data"]["root"] = str(_fashion_mnist_copy(tmp_path / "relabelled", relabel=True))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tree))
    refused = cli_run("verify-compat", "--query-model", model.folder, "--gallery", gallery, "--config", other)
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "digests.query was" in text and "--force" in text, text
    with pytest.raises(ExportError, match="digests.gallery was"):
        verify_compatibility(model.folder, gallery, validate_config(tree))

    older = tmp_path / "older"
    shutil.copytree(model.folder, older)
    manifest = json.loads((older / MANIFEST_FILE).read_text())
    del manifest["data"]
    (older / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="does not record the data it was checked on.*--config"):
        verify_compatibility(older, gallery, config, VerifyOptions(recorded_data=True))


def test_budget_export_and_the_budget_sweep_rank_by_the_searched_metric(tmp_path):
    """One rule: the search's search.metric (here cross_r1, which disagrees with cross_map), fewer MFLOPs
    breaking ties; cross_map for a search recorded without the param; superseded runs and final trainings
    (not candidates of the search) never win."""
    from types import SimpleNamespace

    from orchestrator.export.selection import select_runs
    from orchestrator.results.budget import best_per_budget
    from orchestrator.results.front import CandidateRow, ParetoReport
    from orchestrator.tracking.tags import ROLE_SEARCH, ROLE_TAG, SUPERSEDED_TAG

    values = {"a": (1.0, 50.0, 30.0), "b": (1.5, 40.0, 60.0), "c": (0.8, 50.0, 10.0), "d": (0.5, 99.0, 99.0)}

    def run(name, mflops, r1, map_, superseded=False, role=ROLE_CANDIDATE):
        return SimpleNamespace(info=SimpleNamespace(run_id=name, status="FINISHED"), data=SimpleNamespace(
            metrics={"final_mflops": mflops, "final_cross_r1": r1, "final_cross_map": map_},
            tags={ROLE_TAG: role, **({SUPERSEDED_TAG: "true"} if superseded else {})}, params={}))

    children = [run(name, *numbers, superseded=name == "d") for name, numbers in values.items()]
    children.append(run("final-of-c", 0.8, 90.0, 90.0, role=ROLE_FINAL_TRAINING))

    def tracker(params):
        search = SimpleNamespace(info=SimpleNamespace(run_id="s"), data=SimpleNamespace(
            tags={ROLE_TAG: ROLE_SEARCH}, params=params, metrics={}))
        return SimpleNamespace(client=SimpleNamespace(get_run=lambda run_id: search), child_runs=lambda run_id: children,
                               tracking_uri="sqlite:///x.db")

    (exported_run,) = select_runs(tracker({"search.metric": "cross_r1"}), "s", None, 2.0)[1]
    rows = [CandidateRow(name, name, m, 0, 1.0, r1, map_, 0.0, 0.0, score=r1) for name, (m, r1, map_) in values.items()
            if name != "d"]
    (pick,) = best_per_budget(ParetoReport(rows, None, "cross_r1"), [2.0])
    assert exported_run.info.run_id == pick.best.run_id == "c"  # cross_r1 50 = a's, at fewer MFLOPs
    assert select_runs(tracker({}), "s", None, 2.0)[1][0].info.run_id == "b"  # an old search: cross_map


def test_the_gallery_location_is_recorded_without_credentials(tmp_path):
    from orchestrator.export.pipeline import _location

    assert _location("s3://key:secret@bucket/models/gallery.onnx?X-Amz-Signature=abc") == "s3://bucket/models/gallery.onnx"
    assert _location(tmp_path / "g" / ".." / "gallery.safetensors") == str(tmp_path / "gallery.safetensors")


def test_export_with_an_index_registers_a_model_that_searches_it_and_refuses_another_gallerys(exported, tmp_path,
                                                                                              cli_run):
    """`cmpnas export --index`: the registered version's python_function flavour searches the bundled
    gallery as `cmpnas query` does; an index of another gallery model fails the export before any write."""
    import base64
    import io
    import shutil

    import mlflow
    import pandas as pd
    from mlflow.models import Model
    from PIL import Image

    from orchestrator.serving.embed import GalleryEmbedRequest, embed_configured_gallery
    from orchestrator.serving.query import query_images

    config, _, tracker, models = exported
    model = models[0]
    index = embed_configured_gallery(config, GalleryEmbedRequest(output_dir=tmp_path / "index",
                                                                 splits=("gallery",))).folder
    foreign = shutil.copytree(index, tmp_path / "foreign")
    record = json.loads((foreign / "gallery.json").read_text())
    (foreign / "gallery.json").write_text(json.dumps({**record, "fingerprint": "0" * 64}))
    before = _store_snapshot(tracker)
    refused = cli_run("export", *_search_args(config), "--candidate-run-id", model.run_id, "--output",
                      tmp_path / "refused", "--index", foreign)
    assert refused.exit_code != 0 and "would not be comparable" in refused.output, refused.output
    assert _store_snapshot(tracker) == before

    result = cli_run("export", *_search_args(config), "--candidate-run-id", model.run_id, "--output", tmp_path / "out",
                     "--index", index)
    assert result.exit_code == 0, result.output
    alias = re.search(r"registered as cmpnas-query v\d+ \((\S+)\)", result.output).group(1)
    version = tracker.client.get_model_version_by_alias("cmpnas-query", alias)
    logged = tracker.client.get_logged_model(version.source.removeprefix("models:/"))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location, dst_path=str(tmp_path / "m")))
    assert {"onnx", "python_function"} <= set(Model.load(str(local / "MLmodel")).flavors)
    data = load_data(config)
    png = io.BytesIO()
    Image.fromarray(data.query.images[0][0]).save(png, format="PNG")
    (tmp_path / "query.png").write_bytes(png.getvalue())
    answer = mlflow.pyfunc.load_model(str(local)).predict(
        pd.DataFrame({"image": [base64.b64encode(png.getvalue()).decode()]}), params={"k": 3})
    (expected,) = query_images(model.folder, index, [tmp_path / "query.png"], k=3)
    assert list(answer["ids"][0]) == [match.id for match in expected.matches]

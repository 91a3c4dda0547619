"""The search model (``orchestrator.serving.pyfunc``): registered as ``cmpnas export`` registers an export, then
served by a real ``mlflow models serve`` process from ``models:/NAME@alias`` and asked over HTTP on loopback;
and the same registry version fetched for ``cmpnas serve --model models:/NAME@alias``.

One tracking server and one scoring server for the module: starting them is most of its time.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.export.registry import Registration, register_export
from orchestrator.serving.embed import EmbedOptions, embed_collection, folder_collection
from orchestrator.serving.pyfunc import SearchFlavour
from orchestrator.serving.query import QueryError, QueryService
from orchestrator.tracking.client import SearchTracker
from tests.conftest import MlflowServerProcess, _free_port
from tests.orchestrator.serving.helpers import (  # noqa: F401 - checkpoint, image_root: fixtures
    checkpoint,
    image_root,
    open_tiny_gallery,
    save_tiny_gallery,
    write_query_export,
)

MODEL_NAME = "searchable"
QUERIES = ("cross/003.png", "circle/011.png", "square/000.png")


def _registrable_export(folder: Path, checkpoint: Path) -> tuple[Path, dict]:
    """``write_query_export``'s folder with the manifest keys the registry records (as ``cmpnas export`` writes)."""
    export_dir = write_query_export(folder, checkpoint)
    manifest = json.loads((export_dir / "compatibility.json").read_text())
    manifest.update(manifest_version=1, arch_id="tiny-query", cost={"mflops": 1.5},
                    metrics={"cross_model": {"r1": 90.0}})
    manifest["gallery"]["location"] = str(checkpoint)
    (export_dir / "compatibility.json").write_text(json.dumps(manifest, indent=2))
    (export_dir / "gallery.json").write_text(json.dumps(manifest["gallery"], indent=2))
    return export_dir, manifest


@pytest.fixture(scope="module")
def registry(checkpoint, image_root, tmp_path_factory):
    """A real tracking server holding the export registered with the search model and a gallery index."""
    folder = tmp_path_factory.mktemp("pyfunc")
    server = MlflowServerProcess(folder)
    server.start()
    try:
        export_dir, manifest = _registrable_export(folder / "export", checkpoint)
        index_dir = embed_collection(open_tiny_gallery(checkpoint), folder_collection(image_root), folder / "index",
                                     EmbedOptions()).folder
        tracker = SearchTracker(server.url, "pyfunc")
        run = tracker.client.create_run(tracker.experiment_id)
        registration = Registration(MODEL_NAME, None, SearchFlavour(index_dir))
        version, alias, model_id = register_export(tracker, registration, tracker.client.get_run(run.info.run_id),
                                                   export_dir, manifest)
        yield server.url, export_dir, index_dir, alias, model_id
    finally:
        _stop(server)


def _stop(server: MlflowServerProcess) -> None:
    """Stop the tracking server, killed if it has not ended 5 s after SIGTERM: its uvicorn would wait for
    the keep-alive connections of this process's MLflow client, and its sqlite store needs no shutdown."""
    os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def scoring_server(registry):
    """``mlflow models serve -m models:/NAME@alias --env-manager local`` on a free loopback port."""
    tracking_uri, _, _, alias, _ = registry
    port = _free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", f"models:/{MODEL_NAME}@{alias}",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    # The scoring server runs `uvicorn` from PATH: the environment's, as in an activated virtual environment.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(Path(__file__).parents[3]),
           "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    log = open(Path(os.getcwd()) / "scoring-server.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow models serve did not answer /ping: {Path(log.name).read_text()[-3000:]}")
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        log.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _invoke(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _search_body(image_root: Path, names=QUERIES, k=3) -> dict:
    return {"dataframe_records": [{"image": _b64((image_root / name).read_bytes())} for name in names],
            "params": {"k": k}}


def test_the_served_registry_version_answers_a_search_as_the_query_service_does(scoring_server, registry, image_root):
    _, export_dir, index_dir, _, _ = registry
    status, answer = _invoke(scoring_server, _search_body(image_root))
    assert status == 200, answer
    from workers.datasets.image_files import decode_image

    images = np.stack([decode_image(image_root / name, 16, 1, "") for name in QUERIES])
    expected = QueryService(export_dir, index_dir).search(images, 3)
    assert [row["ids"] for row in answer["predictions"]] == [[match.id for match in row] for row in expected]
    assert [row["ids"][0] for row in answer["predictions"]] == list(QUERIES)
    assert np.allclose([row["scores"] for row in answer["predictions"]],
                       [[match.score for match in row] for row in expected], atol=1e-5)


def _truncated_png(image_root: Path) -> bytes:
    return (image_root / QUERIES[0]).read_bytes()[:60]


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")  # 100 megapixels in a few kilobytes
    return buffer.getvalue()


@pytest.mark.parametrize("make_body, reason", [
    (lambda root: {"dataframe_records": [{"image": "%%% not base64"}]}, "not valid base64"),
    (lambda root: {"dataframe_records": [{"image": _b64(b"plain text, no image")}]}, "could not be decoded"),
    (lambda root: {"dataframe_records": [{"image": _b64(_truncated_png(root))}]}, "could not be decoded"),
    (lambda root: {"dataframe_records": [{"image": _b64(_bomb())}]}, "above the limit"),
    (lambda root: _search_body(root, k=0), "k must be an integer from 1 to 1000"),
    (lambda root: _search_body(root, k=5000), "k must be an integer from 1 to 1000"),
    (lambda root: _search_body(root, k="three"), "k"),
    (lambda root: {"dataframe_records": [{"picture": _b64((root / QUERIES[0]).read_bytes())}]}, "image"),
])
def test_bad_requests_get_a_400_with_the_reason_and_the_server_goes_on(scoring_server, image_root, make_body,
                                                                       reason):
    status, answer = _invoke(scoring_server, make_body(image_root))
    assert status == 400 and reason in answer["message"], answer
    status, answer = _invoke(scoring_server, _search_body(image_root, names=QUERIES[:1], k=1))
    assert status == 200 and answer["predictions"][0]["ids"] == [QUERIES[0]]


def test_the_registered_model_keeps_the_onnx_flavour_and_states_its_signature(registry, tmp_path, monkeypatch):
    import mlflow
    import mlflow.onnx
    from mlflow.models import Model

    tracking_uri, export_dir, _, alias, _ = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # what resolves models:/ and mlflow-artifacts:/
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}@{alias}",
                                                     dst_path=str(tmp_path)))
    described = Model.load(str(local / "MLmodel"))
    assert described.flavors["onnx"]["data"] == "artifacts/model.onnx"
    assert (local / described.flavors["onnx"]["data"]).read_bytes() == (export_dir / "model.onnx").read_bytes()
    assert [spec.name for spec in described.signature.inputs.inputs] == ["image"]
    assert [(param.name, param.default) for param in described.signature.params.params] == [("k", 5)]
    assert described.metadata["arch_id"] == "tiny-query"
    assert mlflow.onnx.load_model(str(local)).graph.input[0].name == "images"


def test_without_an_index_the_model_embeds_only(checkpoint, image_root, tmp_path):
    import mlflow
    import pandas as pd
    from mlflow.models import Model

    export_dir, manifest = _registrable_export(tmp_path / "export", checkpoint)
    SearchFlavour().save(tmp_path / "model", export_dir, manifest, Model())
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    answer = model.predict(pd.DataFrame({"image": [_b64((image_root / QUERIES[0]).read_bytes())]}))
    from workers.datasets.image_files import decode_image

    image = decode_image(image_root / QUERIES[0], 16, 1, "")[None]
    assert np.allclose(np.array(answer["embedding"].tolist()), QueryService.from_files(
        export_dir / "model.onnx", export_dir / "compatibility.json").embed(image), atol=1e-5)
    with pytest.raises(QueryError, match="embeds only"):
        QueryService.from_files(export_dir / "model.onnx", export_dir / "compatibility.json").search(image, 1)


def test_a_gallery_of_another_gallery_model_is_refused_by_the_check_export_stages(checkpoint, image_root, tmp_path):
    export_dir, manifest = _registrable_export(tmp_path / "export", checkpoint)
    other = open_tiny_gallery(save_tiny_gallery(tmp_path / "other.safetensors", seed=1))
    foreign = embed_collection(other, folder_collection(image_root), tmp_path / "foreign", EmbedOptions()).folder
    with pytest.raises(QueryError, match="would not be comparable") as refused:
        SearchFlavour(foreign).check(export_dir, manifest)
    assert "give its folder to --index" in str(refused.value) and "--force" not in str(refused.value)


HOWTO = Path(__file__).parents[3] / "docs" / "howto" / "export-and-serve.md"


def test_the_how_tos_curl_and_python_client_search_the_served_model(scoring_server, image_root):
    import re
    import shutil

    page = HOWTO.read_text()
    (curl,) = re.findall(r'^curl -s "\$MLFLOW_SERVE_URL/invocations".*\\\n.*$', page, flags=re.MULTILINE)
    (client,) = re.findall(r"""python - "\$MLFLOW_SERVE_URL" .*<<'EOF'\n(.*?)\nEOF\n""", page, flags=re.DOTALL)
    photos = image_root.parent / "photos"  # one image, so that `find | head -n 1` is known
    photos.mkdir(exist_ok=True)
    shutil.copyfile(image_root / QUERIES[0], photos / "query.png")
    env = {**os.environ, "MLFLOW_SERVE_URL": scoring_server, "PHOTOS": str(photos)}
    answer = json.loads(subprocess.run(["bash", "-c", curl], env=env, capture_output=True, text=True, check=True,
                                       timeout=60).stdout)
    assert answer["predictions"][0]["ids"][0] == QUERIES[0] and len(answer["predictions"][0]["ids"]) == 3
    printed = subprocess.run([sys.executable, "-c", client, scoring_server,
                              *(str(image_root / name) for name in QUERIES)], capture_output=True, text=True,
                             check=True, timeout=60).stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in printed] == [str(image_root / name) for name in QUERIES]
    assert all(f"('{name}', 1.0)" in line for line, name in zip(printed, QUERIES))


def test_cmpnas_serve_fetches_a_registered_export_by_alias_or_version_once_per_node(registry, image_root, tmp_path,
                                                                                    monkeypatch):
    from orchestrator.export.package import read_manifest
    from orchestrator.serving.registry_reference import resolve_served_model
    from orchestrator.serving.serve.app import open_query_service
    from orchestrator.serving.serve.options import ServeOptions
    from workers.datasets.image_files import decode_image

    tracking_uri, export_dir, index_dir, alias, _ = registry
    monkeypatch.setenv("CMPNAS_CACHE", str(tmp_path / "cache"))
    folder, reference, uri = resolve_served_model(f"models:/{MODEL_NAME}@{alias}", tracking_uri)
    assert (reference, uri) == (f"models:/{MODEL_NAME}@{alias}", tracking_uri)
    assert read_manifest(folder)["files"] == json.loads((export_dir / "compatibility.json").read_text())["files"]
    by_version, _, _ = resolve_served_model(f"models:/{MODEL_NAME}/1", tracking_uri)
    assert by_version == folder  # one download per version, reused
    images = np.stack([decode_image(image_root / name, 16, 1, "") for name in QUERIES])
    expected = [[match.id for match in row] for row in QueryService(export_dir, index_dir).search(images, 3)]
    # A replica on a node without the driver's download fetches its own copy.
    monkeypatch.setenv("CMPNAS_CACHE", str(tmp_path / "other-node"))
    replica = open_query_service(ServeOptions(model=tmp_path / "absent", index=index_dir, model_reference=reference,
                                              tracking_uri=uri))
    assert replica.export_dir.is_relative_to(tmp_path / "other-node")
    assert [[match.id for match in row] for row in replica.search(images, 3)] == expected


@pytest.mark.parametrize("model, reason", [
    ("models:/searchable@nope", "has no alias 'nope'; its aliases: ['pareto-1500kflops']"),
    ("models:/searchable/99", "has no version 99"),
    ("models:/unknown@champion", "no registered model 'unknown'"),
    ("models:/searchable", "is not a registry reference; write models:/NAME@ALIAS"),
])
def test_a_registry_reference_the_server_does_not_hold_is_refused_before_ray_starts(registry, tmp_path, model,
                                                                                    reason, monkeypatch):
    import ray
    from typer.testing import CliRunner

    from orchestrator.cli import app

    tracking_uri, _, index_dir, _, _ = registry
    monkeypatch.setenv("CMPNAS_CACHE", str(tmp_path / "cache"))
    ray_before = ray.is_initialized()
    result = CliRunner().invoke(app, ["serve", "--model", model, "--index", str(index_dir),
                                      "--tracking-uri", tracking_uri])
    assert result.exit_code != 0 and reason in " ".join(result.output.split()), result.output
    assert ray.is_initialized() == ray_before


def test_a_registry_reference_needs_a_tracking_server(monkeypatch):
    from orchestrator.serving.registry_reference import RegistryReferenceError, resolve_served_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RegistryReferenceError, match="pass --tracking-uri .* or set MLFLOW_TRACKING_URI"):
        resolve_served_model("models:/searchable@champion", None)
    assert resolve_served_model("exports/abc", None) == (Path("exports/abc"), None, None)

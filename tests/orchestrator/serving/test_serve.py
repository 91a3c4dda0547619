"""`cmpnas serve` over real HTTP on loopback: a real Ray Serve application on a real local Ray.

One application (two replicas, request batching on, a small body limit) serves every test of the
module; the refusal test runs first, before Ray starts, and checks that nothing was started.
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.serving.embed import embed_collection, folder_collection
from orchestrator.serving.query import QueryError, QueryService
from orchestrator.serving.serve.options import ServeOptions
from tests.orchestrator.serving.helpers import (  # noqa: F401 - checkpoint, image_root: fixtures
    checkpoint,
    image_root,
    open_tiny_gallery,
    save_tiny_gallery,
    write_query_export,
)
from workers.datasets.image_files import decode_image

pytestmark = pytest.mark.integration

MAX_IMAGES = 4
MAX_BODY_MB = 0.25


@pytest.fixture(scope="module")
def export_dir(checkpoint, tmp_path_factory):
    """A query model export whose network is the gallery model: each gallery image finds itself first."""
    return write_query_export(tmp_path_factory.mktemp("export") / "query-model", checkpoint)


@pytest.fixture(scope="module")
def index_dir(checkpoint, image_root, tmp_path_factory):
    return embed_collection(open_tiny_gallery(checkpoint), folder_collection(image_root),
                            tmp_path_factory.mktemp("index") / "gallery").folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_gallery_of_another_gallery_model_is_refused_before_anything_starts(export_dir, image_root, tmp_path):
    import ray

    from orchestrator.serving.serve.runner import start_serving

    other = open_tiny_gallery(save_tiny_gallery(tmp_path / "other.safetensors", seed=1))
    foreign = embed_collection(other, folder_collection(image_root), tmp_path / "foreign").folder
    ray_before = ray.is_initialized()
    with pytest.raises(QueryError, match=r"fingerprint .*would not be comparable.*--force"):
        start_serving(ServeOptions(model=export_dir, index=foreign, port=_free_port()))
    result = CliRunner().invoke(app, ["serve", "--model", str(export_dir), "--index", str(foreign),
                                      "--port", str(_free_port())], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "--force" in " ".join(result.output.split())
    assert ray.is_initialized() == ray_before  # no Ray (so no Serve application) was started by the refusals


@pytest.fixture(scope="module")
def served(export_dir, index_dir):
    """Two replicas with batching on (a batch waits 50 ms to fill), on a Ray of this module's own."""
    import ray

    from orchestrator.serving.serve.runner import patient_proxy_environment, start_serving

    patient_proxy_environment()  # as start_serving does before it starts a Ray of its own
    # Metrics reported every 0.5 s instead of Ray's 10 s, so that the scrape sees them soon.
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             _system_config={"metrics_report_interval_ms": 500})
    options = ServeOptions(model=export_dir, index=index_dir, port=_free_port(), replicas=2, num_cpus=0.5,
                           max_batch_size=8, batch_wait_timeout_s=0.05, max_images=MAX_IMAGES,
                           max_body_mb=MAX_BODY_MB)
    running = start_serving(options)
    try:
        yield running
    finally:
        running.stop()
        ray.shutdown()


def _query_files(image_root):
    return [image_root / "square" / "003.png", image_root / "circle" / "011.png", image_root / "cross" / "000.png"]


def _ids(answer: dict) -> list[list[str]]:
    return [[match["id"] for match in query["results"]] for query in answer["queries"]]


def test_search_by_upload_base64_and_image_body_answers_what_query_service_answers(served, export_dir, index_dir,
                                                                                 image_root):
    files = _query_files(image_root)
    expected = [[match.id for match in result.matches]
                for result in QueryService(export_dir, index_dir).query(files, k=3)]
    url = served.options.url
    uploaded = requests.post(f"{url}/search", files=[("image", (path.name, path.read_bytes(), "image/png"))
                                                      for path in files], data={"k": "3"}, timeout=60)
    assert uploaded.status_code == 200, uploaded.text
    assert _ids(uploaded.json()) == expected and uploaded.json()["k"] == 3
    assert [query["image"] for query in uploaded.json()["queries"]] == [path.name for path in files]
    encoded = [base64.b64encode(path.read_bytes()).decode() for path in files]
    by_json = requests.post(f"{url}/search", json={"images": encoded, "k": 3}, timeout=60)
    assert by_json.status_code == 200, by_json.text
    assert _ids(by_json.json()) == expected
    scores = [match["score"] for match in by_json.json()["queries"][0]["results"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.9999
    one = requests.post(f"{url}/search?k=2", data=files[1].read_bytes(), headers={"Content-Type": "image/png"},
                        timeout=60)
    assert one.status_code == 200 and _ids(one.json()) == [expected[1][:2]]
    default_k = requests.post(f"{url}/search", json={"images": encoded[:1]}, timeout=60).json()
    assert len(default_k["queries"][0]["results"]) == served.options.k_default


def test_embed_health_and_readiness(served, export_dir, index_dir, image_root):
    service = QueryService(export_dir, index_dir)
    files = _query_files(image_root)
    answer = requests.post(f"{served.options.url}/embed",
                           json={"images": [base64.b64encode(path.read_bytes()).decode() for path in files]},
                           timeout=60)
    assert answer.status_code == 200, answer.text
    images = np.stack([decode_image(path, service.image_size, service.channels, "") for path in files])
    np.testing.assert_allclose(np.array(answer.json()["embeddings"]), service.embed(images), atol=1e-5)
    assert answer.json()["dim"] == 16
    assert requests.get(f"{served.options.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{served.options.url}/readyz", timeout=10).json()
    assert ready["ready"] and ready["gallery_size"] == 48 and "CPUExecutionProvider" in ready["providers"]


def _png(size=(20, 20), mode="L") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    values = np.random.default_rng(0).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(values).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")  # 100 megapixels in a few kilobytes
    return buffer.getvalue()


def _two_channel_float_tiff(side: int = 4) -> bytes:
    """A TIFF of 2 samples per pixel in 32-bit float: a channel layout no image library here decodes."""
    pixels = bytes(side * side * 2 * 4)
    entries = [(256, side), (257, side), (258, 32), (259, 1), (262, 1), (273, 0), (277, 2), (278, side),
               (279, len(pixels)), (339, 3)]
    offset = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, value in entries:
        out += struct.pack("<HHII", tag, 4, 1, offset if tag == 273 else value)
    return out + struct.pack("<I", 0) + pixels


BAD_REQUESTS = [  # (what, keyword arguments of requests.post, status, words in the error)
    ("not an image", {"data": b"hello", "headers": {"Content-Type": "image/png"}}, 400, "could not be decoded"),
    ("truncated image", {"data": _png()[:60], "headers": {"Content-Type": "image/png"}}, 400, "could not be decoded"),
    ("decompression bomb", {"data": _bomb(), "headers": {"Content-Type": "image/png"}}, 400, "above the limit"),
    ("body over the limit", {"data": b"x" * int(MAX_BODY_MB * 1024 * 1024 + 1),
                             "headers": {"Content-Type": "image/png"}}, 413, "over the limit"),
    ("two float channels", {"data": _two_channel_float_tiff(), "headers": {"Content-Type": "image/tiff"}}, 400,
     "could not be decoded"),
    ("malformed JSON", {"data": b'{"images": [', "headers": {"Content-Type": "application/json"}}, 400,
     "not valid JSON"),
    ("JSON without images", {"json": {"image": "x"}}, 400, '"images"'),
    ("bad base64", {"json": {"images": ["%%%"]}}, 400, "not valid base64"),
    ("k of 0", {"json": {"images": [base64.b64encode(_png()).decode()], "k": 0}}, 400, "k must be an integer"),
    ("k too large", {"json": {"images": [base64.b64encode(_png()).decode()], "k": 10**6}}, 400, "from 1 to 1000"),
    ("k not a number", {"params": {"k": "many"}, "data": _png(), "headers": {"Content-Type": "image/png"}}, 400,
     "'many'"),
    ("too many images", {"files": [("image", (f"{i}.png", _png(), "image/png")) for i in range(MAX_IMAGES + 1)]},
     400, f"over the limit of {MAX_IMAGES}"),
    ("no image", {"json": {"images": []}}, 400, "no image"),
    ("another content type", {"data": b"text", "headers": {"Content-Type": "text/plain"}}, 415, "not served"),
]


def test_each_bad_request_gets_its_4xx_and_the_server_keeps_serving(served):
    url = served.options.url
    good = {"images": [base64.b64encode(_png()).decode()], "k": 2}
    for what, arguments, status, words in BAD_REQUESTS:
        for route in ("search", "embed"):
            answer = requests.post(f"{url}/{route}", timeout=60, **arguments)
            assert answer.status_code == status, (what, route, answer.text)
            assert words in answer.json()["error"] and answer.json()["status"] == status, (what, answer.json())
        after = requests.post(f"{url}/search", json=good, timeout=60)
        assert after.status_code == 200 and len(after.json()["queries"][0]["results"]) == 2, (what, after.text)


def _metric_lines(served, name: str, deadline_s: float, ready=lambda lines: bool(lines)) -> list[str]:
    """The scraped lines of ``name`` once ``ready`` holds (Ray exports metrics every half second here)."""
    deadline, lines = time.monotonic() + deadline_s, []
    while time.monotonic() < deadline:
        text = "".join(urllib.request.urlopen(url, timeout=10).read().decode() for url in served.metrics_urls())
        lines = [line for line in text.splitlines() if line.startswith(name)]
        if ready(lines):
            break
        time.sleep(0.5)
    return lines


def _total(lines: list[str], suffix: str, route: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.split("{")[0].endswith(suffix) and f'route="{route}"' in line)


def test_two_replicas_batch_concurrent_requests_and_the_metrics_are_scraped(served, image_root):
    from ray import serve

    deployment = serve.status().applications[served.options.app_name].deployments["QueryDeployment"]
    assert deployment.replica_states.get("RUNNING") == 2
    bodies = [path.read_bytes() for path in sorted(image_root.rglob("*.png"))[:24]]

    def post(body: bytes) -> int:
        return requests.post(f"{served.options.url}/search?k=1", data=body, headers={"Content-Type": "image/png"},
                             timeout=60).status_code

    with ThreadPoolExecutor(12) as pool:
        assert list(pool.map(post, bodies)) == [200] * len(bodies)
    requests.post(f"{served.options.url}/search", data=b"not an image", headers={"Content-Type": "image/png"},
                  timeout=60)

    def batched(lines):  # more requests than model calls: some call took a batch of several
        return _total(lines, "_sum", "search") > _total(lines, "_count", "search") > 0

    batch_lines = _metric_lines(served, "ray_cmpnas_serve_batch_size", 30, batched)
    assert batched(batch_lines), batch_lines
    # Each replica exports its own counters on its own clock: wait until every request is counted,
    # not only the first replica's (a slow machine scraped 22 of the 24 answers once).
    def answered(lines, status: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                   if 'route="search"' in line and f'status="{status}"' in line)

    def all_answered(lines):
        return answered(lines, "200") >= 24 and answered(lines, "400") >= 1

    requests_lines = _metric_lines(served, "ray_cmpnas_serve_requests_total", 30, all_answered)
    assert all_answered(requests_lines), requests_lines
    latency = _metric_lines(served, "ray_cmpnas_serve_request_latency_s", 30,
                            lambda lines: _total(lines, "_count", "search") >= 25)
    assert _total(latency, "_count", "search") >= 25, latency

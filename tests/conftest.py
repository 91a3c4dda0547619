"""Shared fixtures: a tiny real configuration and one tiny real gallery model per test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Shard caches of the tests' image folders stay out of ~/.cache (set before Ray starts: workers inherit it).
os.environ["CMPNAS_CACHE"] = tempfile.mkdtemp(prefix="cmpnas-test-cache-")


# A search without ray.address starts its own Ray, unless a cluster started on the machine by `ray start`
# (or another test's ray.cluster_utils.Cluster) is recorded in /tmp/ray/ray_current_cluster: ray.init
# then joins that one, and refuses ray.num_cpus. The tests' searches keep to a Ray of their own.
LOCAL_RAY = {} if os.environ.get("RAY_ADDRESS") else {"RAY_ADDRESS": "local"}


# One local Ray for the in-process searches: starting and stopping Ray costs about 6 s per search on 2
# CPUs, and a search finds a Ray already up and leaves it up, as a notebook's second search does.
# Modules opt in with ``pytestmark = pytest.mark.usefixtures("shared_ray")``; they run one after
# another (pytest_collection_modifyitems), and any other test finds no shared Ray: tests that start a
# Ray or a cluster of their own, or judge whether a command started one, see the machine as before.
# With RAY_ADDRESS set (a cluster of the user's), nothing is shared: each search joins that cluster.
_SHARED_RAY = {"up": False}
SHARED_RAY_CPUS = 2  # tiny_tree's ray.num_cpus


def _asks_for_shared_ray(item) -> bool:
    return "shared_ray" in getattr(item, "fixturenames", ())


def _stop_shared_ray() -> None:
    import ray

    if _SHARED_RAY["up"] and ray.is_initialized():
        ray.shutdown()
    _SHARED_RAY["up"] = False


@pytest.fixture
def shared_ray(request):
    """The session's shared local Ray, started if not up; stopped after a failed test or one that left
    CPUs held (a leaked actor would make every later search wait), so the next test starts afresh."""
    import ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.init(address="local", num_cpus=SHARED_RAY_CPUS, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        _SHARED_RAY["up"] = True
    yield
    report = getattr(request.node, "rep_call", None)
    if _SHARED_RAY["up"] and ((report is not None and report.failed) or not _cpus_come_back(ray)):
        _stop_shared_ray()


def _cpus_come_back(ray, patience_s: float = 10.0) -> bool:
    """Whether every CPU of the shared Ray is free again within ``patience_s`` (a search's actors are
    released asynchronously after it returns)."""
    deadline = time.monotonic() + patience_s
    while ray.available_resources().get("CPU", 0) < SHARED_RAY_CPUS:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (``rep_call``), for fixtures that act on the outcome."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Shut the shared Ray down before a test that did not ask for it, before any of its fixtures
    (session- and module-scoped ones included) is set up."""
    if not _asks_for_shared_ray(item):
        _stop_shared_ray()


def pytest_collection_modifyitems(session, config, items):
    """Run the modules that share a Ray one after another, at the place of the first of them, so that
    the shared Ray starts once; every other test keeps its order."""
    sharing = [item for item in items if _asks_for_shared_ray(item)]
    if not sharing:
        return
    first = items.index(sharing[0])
    others = [item for item in items if not _asks_for_shared_ray(item)]
    items[:] = others[:first] + sharing + others[first:]


def pytest_sessionfinish(session, exitstatus):
    """Shut down a Ray some test left running, while the interpreter is whole; keep the exit status."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process once pytest is done, skipping the interpreter's finalisation.

    Why: a fresh-clone run (2026-12-05 19:29) passed every test, printed its summary and then died of a
    segmentation fault in a background thread during finalisation (kernel: ``python: segfault at ...
    ip <heap address>``, a thread calling into freed native state), so `make test` failed. The suite
    starts and stops Ray, ONNX Runtime, FAISS and torch thread pools dozens of times in one process,
    which Ray documents as unsafe with threads left behind (ray-project/ray#31145). The exit status
    is pytest's, so a failed test still fails the run; a search's own processes exit normally."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


_EXIT_STATUS = pytest.StashKey[int]()


def tiny_tree(tmp_path, **sections) -> dict:
    """A small but real search: Fashion-MNIST subsets, a real timm gallery, a few short trials."""
    # The validation split and the losses are stated, so that tests invoking the CLI without --config
    # (on the embedded quickstart default) run the same search as those validating this tree.
    tree = {
        "data": {"train_size": 3000, "query_size": 300, "gallery_size": 1200, "seed": 0, "validation_size": 0},
        # min_steps 0: the gallery trains the 2 epochs named (its 48 steps embed well enough for the tests).
        "gallery": {"backbone": "resnet10t", "epochs": 2, "min_steps": 0, "batch_size": 128, "lr": 0.002,
                    "checkpoint": str(tmp_path / "gallery.safetensors")},
        # min_steps 0: the tests' small splits train the epochs they name.
        "training": {"epochs": 2, "batch_size": 128, "lr": 0.003, "min_steps": 0,
                     "loss_weights": {"own_classifier": 1.0, "bct_influence": 1.0, "cosine_alignment": 10.0}},
        "search": {"strategy": "evolution", "num_candidates": 3, "max_concurrent": 2, "seed": 0, "max_mflops": 2.5,
                   "evolution": {"population_size": 2, "sample_size": 2}},
        # Latency off: timing a candidate exports it to ONNX (torch.export, 6-7 CPU-s each, the paragon's
        # more), which tests of something else do not read; the shared finished search and the tests of
        # latency turn it on.
        "resources": {"cpus_per_trial": 1, "max_failures": 0, "measure_latency": False},
        # Tiny searches train a few dozen steps against a gallery model trained a few dozen more: their
        # candidates sit near chance, which the compatibility floors (paragon, chance) rightly fail and end
        # short (exit 4). Tests of something else judge them by the homogeneous ratio alone, as before;
        # the floors are tested where they are the subject (test_compatibility_shortfall, test_trial_report).
        "evaluation": {"paragon_ratio": 0.0, "chance_margin": None},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "cmpnas-test"},
        "ray": {"num_cpus": 2},
        "output_dir": str(tmp_path / "out"),
    }
    for name, values in sections.items():
        tree[name] = {**tree.get(name, {}), **values} if isinstance(values, dict) else values
    # Another gallery source: the fields of the model cmpnas trains go, unless the test sets them.
    from orchestrator.config.schema import trained_only_fields

    given = sections.get("gallery", {})
    foreign = trained_only_fields(tree["gallery"].get("source", "cmpnas"))
    tree["gallery"] = {key: value for key, value in tree["gallery"].items() if key in given or key not in foreign}
    return tree


@pytest.fixture
def synced_paths(monkeypatch) -> list[Path]:
    """The paths ``os.fsync`` is called on from now on, in call order (each call still happens)."""
    synced: list[Path] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor):
        synced.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced


@pytest.fixture(scope="session", autouse=True)
def prebuilt_tracking_schema():
    """New sqlite tracking stores copy a schema built once (tests/prebuilt_tracking_schema.py says why)."""
    from tests import prebuilt_tracking_schema

    with pytest.MonkeyPatch.context() as patch:
        prebuilt_tracking_schema.install(patch)
        yield


@pytest.fixture(scope="session", autouse=True)
def run_in_scratch_directory(tmp_path_factory):
    """MLflow puts a sqlite store's artifacts under ./mlruns: keep them out of the checkout."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(scope="session")
def gallery_dir(tmp_path_factory):
    """A folder holding a trained tiny gallery checkpoint, shared by every test that needs one."""
    from rich.console import Console

    from orchestrator.config import validate_config
    from orchestrator.setup.data import load_data
    from orchestrator.setup.gallery import train_and_save_gallery
    from workers.training.preprocess import pick_device

    folder = tmp_path_factory.mktemp("gallery")
    config = validate_config(tiny_tree(folder))
    train_and_save_gallery(config, load_data(config), pick_device(), Console(quiet=True).log)
    return folder


@pytest.fixture(scope="session")
def tiny_data(gallery_dir):
    from orchestrator.config import validate_config
    from orchestrator.setup.data import load_data

    return load_data(validate_config(tiny_tree(gallery_dir)))


@pytest.fixture(scope="session")
def finished_search(gallery_dir, tmp_path_factory):
    """One tiny real search (local Ray, sqlite MLflow), shared by the tests that read its records."""
    from rich.console import Console

    from orchestrator.config import validate_config
    from orchestrator.search.driver import run_search
    from orchestrator.tracking.client import SearchTracker

    folder = tmp_path_factory.mktemp("search")
    # Candidates on half the gallery's training images: the tests read records, not accuracy.
    config = validate_config(tiny_tree(folder, data={"train_size": 1500},
                                       gallery={"checkpoint": str(gallery_dir / "gallery.safetensors")},
                                       resources={"measure_latency": True}))
    console = Console(record=True, width=160)
    outcome = run_search(config, console)
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    return config, outcome, tracker, console.export_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServerProcess(tmp_path)
    server.start()
    try:
        yield server.url, tmp_path / "server-artifacts"
    finally:
        server.stop()


class MlflowServerProcess:
    """A real `mlflow server` (sqlite store, served artifacts) on a fixed port: it can be stopped and
    started again at the same address, as a restarted tracking server would be."""

    def __init__(self, folder: Path):
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                        "--port", self.url.rsplit(":", 1)[1], "--workers", "1",
                        "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                        "--artifacts-destination", str(folder / "server-artifacts"), "--serve-artifacts"]
        self.process: subprocess.Popen | None = None

    def start(self, patience_s: float = 240) -> None:
        # Its own process group, so stop() ends the server's workers too.
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + patience_s  # a loaded CI machine can take minutes to import mlflow
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        self.stop()
        pytest.fail(f"mlflow server did not become healthy in {patience_s:.0f} s")

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
            self.process = None

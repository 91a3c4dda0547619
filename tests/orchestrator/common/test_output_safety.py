"""One job per output_dir, credentials kept in the process, and what a resume trusts.

Covers ``orchestrator.common.output_lock``, ``orchestrator.common.credentials`` and the resume checks of
``orchestrator.search.state`` / ``orchestrator.search.driver``: the lock against a real second process,
credentials against a real search recording to a real `mlflow server`.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient
from rich.console import Console
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.common.credentials import (
    fields_with_credentials,
    redact_text,
    redact_tree,
    redact_uri,
    redacted_excerpt,
)
from orchestrator.common.log_redaction import RedactingFilter, install_log_redaction
from orchestrator.common.output_lock import LOCK_FILE, OutputDirLockedError, locked_output_dir
from orchestrator.config import validate_config
from orchestrator.search.state import (
    ResumeError,
    SearchState,
    check_recorded_tune_path,
    check_resume_config,
    check_resumed_supernet,
    tune_experiment_path,
)
from orchestrator.tracking.tags import ROLE_SEARCH, ROLE_SUPERNET, ROLE_TAG
from tests.conftest import tiny_tree

SECRET = "s3cret-Pa55"


def _invoke(*args):
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return SimpleNamespace(exit_code=result.exit_code, text=" ".join(result.output.split()))


@pytest.fixture
def held_output_dir(tmp_path):
    """``tmp_path/out`` locked by another process, as a running search would hold it."""
    folder = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from orchestrator.common.output_lock import locked_output_dir\n"
         f"with locked_output_dir({str(folder)!r}, 'cmpnas search'):\n    print('held', flush=True); time.sleep(600)",
         f"--set=tracking.uri=http://me:{SECRET}@mlflow:5000"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder
    if holder.poll() is None:
        holder.kill()
        holder.wait()


def test_a_second_job_on_a_held_output_dir_is_refused_naming_the_holder(held_output_dir, tmp_path):
    folder, holder = held_output_dir
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_tree(tmp_path)))
    for command in (["search", "--config", str(config)], ["search", "--config", str(config), "--resume"],
                    ["sync", "--output-dir", str(folder)], ["gallery", "train", "--config", str(config)],
                    ["supernet", "train", "--config", str(config)]):
        result = _invoke(*command)
        assert result.exit_code == 2, (command, result.text)
        assert "OutputDirLockedError" in result.text and f"pid {holder.pid}" in result.text, (command, result.text)
        assert "cmpnas search" in result.text and "another folder" in result.text
    assert sorted(path.name for path in folder.iterdir()) == [LOCK_FILE]  # the refused jobs wrote nothing
    lock_record = (folder / LOCK_FILE).read_text()
    assert "mlflow:5000" in lock_record and SECRET not in lock_record  # the holder's argv, without credentials


def test_the_lock_dies_with_its_holder_and_is_reentrant_within_a_process(held_output_dir):
    folder, holder = held_output_dir
    with pytest.raises(OutputDirLockedError):
        with locked_output_dir(folder, "test"):
            pass
    holder.send_signal(signal.SIGKILL)  # a killed driver leaves nothing that blocks the resume
    holder.wait()
    with locked_output_dir(folder, "outer"):
        with locked_output_dir(folder, "inner"):  # a search training its gallery takes it again
            pass
        probe = subprocess.run([sys.executable, "-c", "from orchestrator.common.output_lock import locked_output_dir\n"
                                f"with locked_output_dir({str(folder)!r}, 'x'): pass"], capture_output=True, text=True)
        assert probe.returncode == 1 and "OutputDirLockedError" in probe.stderr  # still held after the inner exit
    probe = subprocess.run([sys.executable, "-c", "from orchestrator.common.output_lock import locked_output_dir\n"
                            f"with locked_output_dir({str(folder)!r}, 'x'): pass"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


def test_uris_lose_their_credentials_and_nothing_else():
    assert redact_uri(f"https://user:{SECRET}@mlflow.example:5000/path?x=1") == "https://mlflow.example:5000/path?x=1"
    assert redact_uri(f"postgresql://db/mlflow?sslmode=require&password={SECRET}") == \
        "postgresql://db/mlflow?sslmode=require"
    for plain in ("sqlite:////tmp/mlflow.db", "s3://bucket/runs", "/mnt/shared/ray", "http://mlflow:5000"):
        assert redact_uri(plain) == plain
    assert SECRET not in redact_text(f"cannot reach http://me:{SECRET}@host/api (refused)")
    tree = {"tracking": {"uri": f"http://me:{SECRET}@h"}, "ray": {"storage_path": f"s3://bucket/x?token={SECRET}"}}
    assert fields_with_credentials(tree) == ["tracking.uri", "ray.storage_path"]
    assert SECRET not in json.dumps(redact_tree(tree)) and SECRET in json.dumps(tree)  # the input is kept


def test_redaction_fails_closed(tmp_path):
    # A URI urlsplit cannot parse (an unclosed IPv6 bracket) is replaced whole, not returned as it is.
    broken = f"http://me:{SECRET}@[::1/mlflow"
    assert SECRET not in redact_uri(broken) and redact_uri(broken).startswith("http://<URI redacted")
    assert SECRET not in json.dumps(redact_tree({"tracking": {"uri": broken}}))
    # The user-info of a URI in a text goes whatever the password holds, and user:pass@host without a scheme.
    for password in ("pa(ss)word", "it's-me", "a@b@c", "x[1]{2}"):
        for text in (f"refused http://me:{password}@host:5000/api (401)", f"'https://me:{password}@host'",
                     f"(see http://me:{password}@host)", f"dsn me:{password}@db:5432/mlflow"):
            assert password not in redact_text(text), text
    assert redact_text("see http://host:5000 and mail ops@example.com") == "see http://host:5000 and mail ops@example.com"
    # A secret redacted once is masked wherever it shows again, here with a space that ends the URI pattern.
    spaced = "two words-Zq8"
    redact_uri(f"https://me:{spaced}@mlflow.example")
    assert spaced not in redact_text(f"cannot reach https://me:{spaced}@mlflow.example (refused)")
    # A bare user name is no secret: it is not masked in every later line (a token-long one is).
    redact_uri("http://cmpnasuser@mlflow.example/")
    assert redact_text("the cmpnasuser account") == "the cmpnasuser account"
    token = "t0kenT0kenT0ken-42"
    redact_uri(f"https://{token}@mlflow.example/")
    assert token not in redact_text(f"a token {token} in a message")


def test_messages_are_redacted_before_they_are_cut(tmp_path):
    fresh = "Fr3shSecret-9d1"  # never redacted before in this process: only the order of the two steps protects it
    text = "x" * 280 + f" http://me:{fresh}@mlflow.example:5000/api failed"
    left = text[:300].rpartition("http://me:")[2]  # what a cut at 300 leaves of the password
    assert len(left) >= 6 and fresh.startswith(left) and left not in redacted_excerpt(text)
    assert redacted_excerpt("first line\nsecond") == "first line" and len(redacted_excerpt(text, 50)) == 50


def test_every_log_record_is_redacted(tmp_path):
    fresh = "L0gSecret-77x"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("cmpnas.test.redaction")
    logger.addHandler(handler)
    try:
        logger.error("cannot reach %s (%d)", f"http://me:{fresh}@host/api", 401)
        try:
            raise RuntimeError(f"refused: https://me:{fresh}@host")
        except RuntimeError:
            logger.exception("unexpected")
    finally:
        logger.removeHandler(handler)
    assert fresh not in stream.getvalue() and "cannot reach http://host/api (401)" in stream.getvalue()
    assert "RuntimeError: refused: https://host" in stream.getvalue()  # the traceback kept, redacted
    # Installed: also records reaching a handler added afterwards (a library's own), and Python's last resort.
    install_log_redaction()
    later = io.StringIO()
    other = logging.getLogger("some.library")
    other.addHandler(logging.StreamHandler(later))
    try:
        other.warning("token in %s", f"s3://bucket/x?token={fresh}")
    finally:
        other.handlers.clear()
    assert fresh not in later.getvalue() and "s3://bucket/x" in later.getvalue()
    # A logger's filter still sees the exception itself (Tune's staging-race filter drops records by it).
    seen = []
    other.addFilter(lambda record: seen.append(record.exc_info) or True)
    try:
        raise FileNotFoundError(f"https://me:{fresh}@host")
    except FileNotFoundError:
        other.exception("copy failed")
    assert seen and seen[0] is not None and isinstance(seen[0][1], FileNotFoundError)
    other.filters.clear()
    assert any(isinstance(f, RedactingFilter) for f in logging.lastResort.filters)


def test_an_unexpected_error_keeps_its_traceback_without_credentials(tmp_path):
    """A bug's exception is not cmpnas's to report as one line: it reaches Python's hook, which prints it."""
    program = ("import orchestrator.search.space_info as space_info\n"
               "def broken(*args, **kwargs):\n"
               f"    raise RuntimeError('bug while talking to http://me:{SECRET}@mlflow:5000')\n"
               "space_info.describe_space = broken\n"
               "from orchestrator.cli import main\n"
               "main()\n")
    result = subprocess.run([sys.executable, "-c", program, "space", "info"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" in result.stderr and "RuntimeError: bug while talking to http://mlflow:5000" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_state_file_and_resume_check_hold_no_credentials(tmp_path):
    tree = tiny_tree(tmp_path, ray={"storage_path": "s3://bucket/ray"},
                     tracking={"uri": f"http://me:{SECRET}@127.0.0.1:5000"})
    config = validate_config(tree).model_dump(mode="json")
    state = SearchState.new(config, config["tracking"]["uri"], "e")
    state.tune_experiment_path = tune_experiment_path(config["ray"]["storage_path"], "0123456789abcdef")
    (tmp_path / "out").mkdir()
    state.save(tmp_path / "out")
    text = SearchState.path_in(tmp_path / "out").read_text()
    assert SECRET not in text and "http://127.0.0.1:5000" in text and "s3://bucket/ray/search-01234567" in text
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["search_state.json"]  # no temporary left
    recorded = SearchState.load(tmp_path / "out")
    # The same search, given its credentials again, is not "changed": storage_path may not change on resume.
    assert check_resume_config(recorded.config, config) == []
    check_recorded_tune_path(recorded, tune_experiment_path(config["ray"]["storage_path"], "0123456789abcdef"))


def test_a_pickled_tracker_holds_no_credentials(tmp_path):
    """Tune pickles its callbacks, trackers included, into the experiment state under ray.storage_path."""
    import pickle

    from orchestrator.tracking.client import SearchTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}?token={SECRET}"
    tracker = SearchTracker(uri, "pickled")
    pickled = pickle.dumps(tracker)
    assert SECRET.encode() not in pickled
    assert pickle.loads(pickled).tracking_uri == uri  # this process gave it: the full URI again


def test_a_storage_path_with_credentials_is_refused_before_anything_is_written(tmp_path):
    """Tune writes its storage path into its experiment files: credentials belong in the environment."""
    for storage in (f"s3://key:{SECRET}@bucket/ray", f"s3://bucket/ray?secret_key={SECRET}"):
        result = _invoke("search", "--set", f"ray.storage_path={storage}", "--set", f"output_dir={tmp_path / 'out'}")
        assert result.exit_code == 2 and "ray.storage_path holds credentials" in result.text, result.text
        assert "AWS_SECRET_ACCESS_KEY" in result.text and SECRET not in result.text
    assert not (tmp_path / "out").exists()


def test_a_tune_path_the_configuration_does_not_give_is_refused(tmp_path):
    state = SearchState.new({}, "sqlite:///x.db", "e")
    state.tune_experiment_path = "/somewhere/else/search-01234567"  # an edited state file
    with pytest.raises(ResumeError, match="unpickles.*only from the configured storage path"):
        check_recorded_tune_path(state, tune_experiment_path(str(tmp_path / "ray_results"), "0123456789abcdef"))


def test_a_resume_with_another_supernet_is_refused():
    state = SearchState.new({}, "sqlite:///x.db", "e")
    check_resumed_supernet(state, SimpleNamespace(fingerprint="a" * 64))  # the first session records it
    assert state.supernet_fingerprint == "a" * 64
    state.sessions = 2
    check_resumed_supernet(state, SimpleNamespace(fingerprint="a" * 64))
    with pytest.raises(ResumeError, match="supernet of fingerprint aaaaaaaaaaaa.*bbbbbbbbbbbb"):
        check_resumed_supernet(state, SimpleNamespace(fingerprint="b" * 64))
    with pytest.raises(ResumeError, match="none"):
        check_resumed_supernet(state, None)


def test_resume_if_unfinished_resumes_an_unfinished_search_and_starts_otherwise(tmp_path):
    tree = tiny_tree(tmp_path)
    config = validate_config(tree)
    state = SearchState.new(config.model_dump(mode="json"), config.tracking.uri, config.tracking.experiment)
    state.phase, state.parent_run_id = "interrupted", "0123456789abcdef"
    (tmp_path / "out").mkdir()
    state.save(tmp_path / "out")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    # Resumed: a changed search is then refused as a resume refuses it.
    result = _invoke("search", "--config", str(path), "--resume-if-unfinished", "--set", "search.num_candidates=7")
    assert result.exit_code == 2 and "resuming the unfinished search" in result.text
    assert "search.num_candidates was 3, now 7" in result.text
    # Finished: a new search starts (and is refused here for its missing gallery file, before any record).
    state.phase = "finished"
    state.save(tmp_path / "out")
    result = _invoke("search", "--config", str(path), "--resume-if-unfinished", "--set", "gallery.source=onnx",
                     "--set", f"gallery.path={tmp_path / 'missing.onnx'}", "--set", "gallery.checkpoint=null")
    assert "no unfinished search" in result.text and "starting a new one" in result.text, result.text
    assert result.exit_code == 2 and "missing.onnx" in result.text
    assert _invoke("search", "--resume", "--resume-if-unfinished").exit_code == 2


@pytest.mark.integration
def test_credentials_in_the_tracking_uri_never_leave_the_process(mlflow_server, gallery_dir, shared_ray, tmp_path, caplog,
                                                                  capfd, monkeypatch):
    """A search, a supernet training, a gallery embedding and an export, each recording to a real
    `mlflow server` through a URI with credentials: the secret is in no file written (output folder,
    Tune's storage, the export, the embedded gallery, the server's store and artifacts), no MLflow
    param, tag or registry entry, no log record and nothing on the terminal."""
    from orchestrator.search.driver import run_search

    # MLflow prints each ended run's URL to stdout unless this is set (it is set for a URI with credentials).
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    url, artifacts = mlflow_server
    uri = url.replace("http://", f"http://cmpnas:{SECRET}@")
    tree = tiny_tree(tmp_path, data={"train_size": 600, "query_size": 100, "gallery_size": 400},
                     gallery={"checkpoint": str(gallery_dir / "gallery.safetensors")},
                     training={"epochs": 1, "batch_size": 100},
                     search={"num_candidates": 2, "strategy": "random"},
                     supernet={"epochs": 1, "batch_size": 50, "num_random_subnets": 1, "calibration_images": 100},
                     resources={"measure_latency": False}, tracking={"uri": url})
    console = Console(record=True, width=200)
    outcome = run_search(validate_config({**tree, "tracking": {**tree["tracking"], "uri": uri}}), console)
    assert len(outcome.report.candidates) == 2
    terminal = [console.export_text(), *capfd.readouterr()]  # what cmpnas printed, and what libraries printed
    assert "tracking.uri holds credentials" in caplog.text
    # The configuration file holds no secret; the URI with credentials comes on the command line.
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    for command in (["supernet", "train", "--config", str(config), "--set", f"tracking.uri={uri}"],
                    ["gallery", "embed", "--config", str(config), "--set", f"tracking.uri={uri}",
                     "--output", str(tmp_path / "embedded"), "--split", "query"],
                    ["export", "--config", str(config), "--tracking-uri", uri, "--search-run-id", outcome.parent_run_id,
                     "--max-mflops", "100", "--output", str(tmp_path / "export")]):
        result = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
        assert result.exit_code == 0, (command[:2], result.output)
        terminal.append(result.output)
    assert (tmp_path / "out" / "supernet.safetensors").is_file() and (tmp_path / "embedded" / "ids.txt").is_file()
    assert [path.name for path in (tmp_path / "out" / "ray_results").iterdir() if path.name.startswith("supernet-")]
    terminal += capfd.readouterr()
    assert not [text for text in terminal if SECRET in text]
    assert SECRET not in caplog.text
    leaks = [str(path) for path in tmp_path.rglob("*") if path.is_file() and SECRET.encode() in path.read_bytes()]
    assert leaks == []  # state file, config.json, journal, Tune's experiments, exports, the server's store, artifacts
    client = MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name(tree["tracking"]["experiment"]).experiment_id])
    assert {ROLE_SEARCH, ROLE_SUPERNET} <= {run.data.tags.get(ROLE_TAG) for run in runs}
    for run in runs:
        assert not any(SECRET in value for value in [*run.data.params.values(), *run.data.tags.values()])
    assert client.get_run(outcome.parent_run_id).data.params["tracking.uri"] == url
    versions = client.search_model_versions()
    assert versions and not any(SECRET in str(dict(version)) for version in versions)
    assert json.loads((tmp_path / "out" / "search_state.json").read_text())["tracking_uri"] == url


def test_a_restarted_job_waits_for_a_lock_that_is_released_meanwhile(held_output_dir, monkeypatch):
    import threading

    import orchestrator.common.output_lock as output_lock

    folder, holder = held_output_dir
    monkeypatch.setattr(output_lock, "LOCK_POLL_S", 0.2)
    threading.Timer(1.0, holder.kill).start()  # the lost node's lease runs out
    started = time.monotonic()
    with locked_output_dir(folder, "cmpnas search --resume", wait_s=30):
        waited = time.monotonic() - started
    assert 0.8 < waited < 10
    holder.wait()


def test_refused_credentials_are_named_as_such_not_as_an_outage(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import UNAUTHENTICATED

    import orchestrator.tracking.session as tracking_session
    from orchestrator.tracking.errors import TrackingCredentialsError

    def refusing(uri, experiment):  # what MLflow raises for a server's HTTP 401
        raise MlflowException(f"API request to {uri}/api/2.0/mlflow/experiments/get-by-name failed: 401",
                              error_code=UNAUTHENTICATED)

    monkeypatch.setattr(tracking_session, "SearchTracker", refusing)
    with pytest.raises(TrackingCredentialsError) as refusal:
        tracking_session.open_tracker(f"https://me:{SECRET}@mlflow.example", "e")
    message = str(refusal.value)
    assert "MLFLOW_TRACKING_USERNAME" in message and "refused this process" in message
    assert SECRET not in message and "unreachable" not in message and "cannot be reached" not in message

"""A local, append-only journal of a search's MLflow writes, sent with retries and replayable.

A tracking server that restarts or stays down for an hour must neither fail trials nor lose a
result. Every write is therefore appended to ``OUTPUT_DIR/tracking_journal/journal.jsonl``
*before* it is sent; the journal then sends what is pending, oldest first. While the server is
unreachable, writes only accumulate (probes back off from ``RetryPolicy.first_delay_s`` up to
``max_delay_s``) and the search goes on. ``cmpnas sync`` or ``cmpnas search --resume`` replays
whatever is still pending.

Lines of the journal file::

    {"entry": ID, "op": OP, "run": REF, "args": {...}}   a write, recorded before it is sent
    {"done": ID}                                         MLflow accepted it
    {"rejected": ID, "error": TEXT}                      MLflow refused it for good (e.g. bad value)

The file is opened for appending only by the job holding ``output_dir`` (``orchestrator.common.output_lock``).
A crash can cut only the last line short: opening the journal for writing truncates the file to
its last newline (the cut write was never sent, or, for a ``done`` line, is sent again, which is
idempotent), so the next append starts a line of its own instead of being glued to the torn one.
Each append is fsynced before the write is sent: a write MLflow has accepted is in the journal.
An append that fails (a full disk: ENOSPC, EIO, a short write) is cut back to the file's length
before it, so no half line is left to swallow the next one, and the job stops with
``JournalWriteError``: a search must not go on with writes it cannot record.
An artifact is copied into the journal's folder (``artifacts/``) and fsynced, with its folders,
before its entry is appended: an entry never points at a copy a power cut could have emptied.

Only network errors (and MLflow's own non-permanent error codes) are an outage, retried later
(``is_transient``). Any other failure of one write, such as a staged artifact that is missing or
unreadable, is that write's alone: it is marked ``rejected`` with the error, and the rest is sent.

Replaying is idempotent. Runs are named by references (``parent``, ``trial:<tune trial id>``)
that resolve to MLflow run ids by tag, so a child run is found again rather than created twice.
Metrics carry the timestamp taken when they were journaled: MLflow keys a metric history row by
(key, timestamp, step, value) and ignores an identical row, so a write sent twice (sent, then
the driver died before ``done`` reached the file) leaves one row. Params, tags, statuses and
artifacts are idempotent in MLflow already. Writes with a ``key`` (one logical record, such as
"epoch 2 of trial t") are journaled once per search: a repeated epoch after a restore is not
logged twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sqlite3
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from orchestrator.common.credentials import redact_text, redacted_excerpt
from orchestrator.tracking.client import SearchTracker, now_ms, param_value
from orchestrator.tracking.errors import JournalWriteError
from orchestrator.tracking.tags import PARENT_RUN_TAG, TRIAL_ID_TAG
from workers.storage.durable_write import fsync_path

logger = logging.getLogger(__name__)

JOURNAL_FOLDER = "tracking_journal"
JOURNAL_FILE = "journal.jsonl"
PARENT = "parent"
# MLflow refuses these for good: sending them again would never succeed and would block the queue.
PERMANENT_ERROR_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
    "BAD_REQUEST", "MALFORMED_REQUEST",
})
# MLflow's HTTP client retries a refused connection 7 times with exponential backoff (about four
# minutes per call) by default; the journal retries on its own schedule instead, so that Tune's
# event loop is never blocked that long. A value the user set is kept.
_MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                         "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


# The server is there but refuses this process (HTTP 401/403). Kept for later like an outage (the
# writes are not wrong), but said as what it is: credentials are never recorded
# (orchestrator.common.credentials), so a resume or sync must be given them again.
CREDENTIAL_ERROR_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"})
CREDENTIALS_ADVICE = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the "
                      "environment, or give tracking.uri with them again: cmpnas records no credentials, so a "
                      "resume or `cmpnas sync` needs them anew")


def is_credential_error(error: BaseException) -> bool:
    return isinstance(error, MlflowException) and error.error_code in CREDENTIAL_ERROR_CODES


@dataclass(frozen=True)
class RetryPolicy:
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0


def trial_ref(trial_id: str) -> str:
    return f"trial:{trial_id}"


def trial_id_of(ref: str) -> str | None:
    return ref.split(":", 1)[1] if ref.startswith("trial:") else None


def read_journal(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every entry of a journal file by id, and the ids still to send, in order (empty if no file)."""
    entries: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return entries, []
    order: list[str] = []
    finished: set[str] = set()
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                # A byte no journal write makes (a damaged disk block) spoils its line only.
                logger.warning("%s: line %d is not UTF-8 and was skipped", path, number)
                continue
            except json.JSONDecodeError:
                # Only a write cut short by a crash can leave half a line, and only at the end.
                logger.warning("%s: line %d is incomplete and was skipped", path, number)
                continue
            if not isinstance(record, dict):
                # Valid JSON that no journal write makes (an edit, a damaged file): it holds no record.
                logger.warning("%s: line %d is JSON but not a journal record (%s) and was skipped", path, number,
                               type(record).__name__)
                continue
            if "entry" in record:
                entries[record["entry"]] = record
                order.append(record["entry"])
            else:
                finished.add(record.get("done") or record.get("rejected"))
    return entries, [entry_id for entry_id in order if entry_id not in finished]


def truncate_torn_line(path: Path) -> None:
    """Cut a journal file back to its last newline: what follows it is a line a crash cut short."""
    if not path.is_file():
        return
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end == size:
            return
        handle.seek(end)
        torn = handle.read(200)
        handle.truncate(end)
        handle.flush()
        os.fsync(handle.fileno())
    logger.warning("%s: removed a last line cut short by a crash (%d bytes: %r...)", path, size - end, torn[:80])


def unsent_writes(folder: Path) -> int:
    """Writes journaled in ``folder`` that have neither reached MLflow nor been refused by it."""
    return len(read_journal(Path(folder) / JOURNAL_FILE)[1])


def retire_journal(folder: Path) -> None:
    """Remove a journal whose every write reached MLflow, before a new search in the same output dir.

    A journal belongs to one search: its keys (``parent/summary``, ...) and its ``PARENT`` refer to
    that search's parent run, so a new search must not read them (it would skip its own keyed
    records as already written).
    """
    folder = Path(folder).resolve()
    if unsent_writes(folder):
        raise ValueError(f"{folder} still holds unsent writes; send them with `cmpnas sync` first")
    with TrackingJournal._open_lock:
        TrackingJournal._open.pop(folder, None)
    shutil.rmtree(folder, ignore_errors=True)


def _network_errors() -> tuple[type[BaseException], ...]:
    import requests

    # requests' errors are OSErrors, like a missing file: only these ones mean the server is not there.
    return (ConnectionError, TimeoutError, socket.gaierror, socket.herror, requests.exceptions.ConnectionError,
            requests.exceptions.Timeout, sqlite3.OperationalError)


def is_transient(error: BaseException) -> bool:
    """Worth retrying later: the server is down, restarting, overloaded or timing out (a network
    error anywhere in the chain of causes). A local file that is missing or unreadable is not."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MlflowException):
            return error.error_code not in PERMANENT_ERROR_CODES
        if isinstance(error, _network_errors()) or "sqlite3.OperationalError" in repr(error):
            return True
        error = error.__cause__ or error.__context__
    return False


class TrackingJournal:
    """The MLflow writer of one search: journal first, then send; ``folder=None`` sends directly."""

    _open: typing.ClassVar[dict[Path, TrackingJournal]] = {}
    _open_lock = threading.Lock()

    def __init__(self, tracker: SearchTracker, parent_run_id: str, folder: Path | None,
                 policy: RetryPolicy = RetryPolicy()):
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.folder = Path(folder).resolve() if folder is not None else None
        self.policy = policy
        self.session = f"{now_ms():x}-{os.getpid()}"
        self._lock = threading.RLock()
        self._sequence = 0
        self._entries: dict[str, dict[str, Any]] = {}
        self._pending: list[str] = []
        self._resolved: dict[str, str] = {PARENT: parent_run_id}
        self._failures = 0
        self._next_try = 0.0
        self._outage_logged = False
        self.sent = 0
        if self.folder is not None:
            for name, value in _MLFLOW_HTTP_DEFAULTS.items():
                os.environ.setdefault(name, value)
            (self.folder / "artifacts").mkdir(parents=True, exist_ok=True)
            self._load()

    # -- one journal per folder and process ----------------------------------------------------
    @classmethod
    def open(cls, tracker: SearchTracker, parent_run_id: str, folder: Path,
             policy: RetryPolicy = RetryPolicy()) -> TrackingJournal:
        """The process's journal of ``folder``: two writers on one file would each miss the other's
        entries. A new tracker (e.g. another tracking URI on resume) replaces the old one."""
        folder = Path(folder).resolve()
        with cls._open_lock:
            journal = cls._open.get(folder)
            if journal is None or journal.parent_run_id != parent_run_id:
                journal = cls._open[folder] = cls(tracker, parent_run_id, folder, policy)
            else:
                journal.tracker, journal.policy = tracker, policy
                journal._next_try, journal._failures = 0.0, 0
            return journal

    @classmethod
    def opened(cls, folder: Path) -> TrackingJournal | None:
        with cls._open_lock:
            return cls._open.get(Path(folder).resolve())

    @property
    def path(self) -> Path | None:
        return self.folder / JOURNAL_FILE if self.folder else None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def has(self, key: str) -> bool:
        return key in self._entries

    def _load(self) -> None:
        truncate_torn_line(self.path)
        self._entries, self._pending = read_journal(self.path)

    def _append(self, record: dict[str, Any]) -> None:
        # One line on an O_APPEND file, fsynced before the write it records is sent; a failed append
        # is cut back, so the next line cannot be glued to half of this one.
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            length = os.fstat(descriptor).st_size
            try:
                written = 0
                while written < len(line):  # write() may take part of it (a short write) without an error
                    written += os.write(descriptor, line[written:])
                os.fsync(descriptor)
            except OSError as error:
                self._cut_back(descriptor, length, error)
        finally:
            os.close(descriptor)

    def _cut_back(self, descriptor: int, length: int, error: OSError) -> None:
        try:
            os.ftruncate(descriptor, length)
            os.fsync(descriptor)
            state = "it was cut back to its last complete line, so nothing recorded before is lost"
        except OSError as truncate_error:
            # Opening the journal again cuts the torn line (truncate_torn_line).
            state = f"cutting it back failed too ({truncate_error}); the next resume cuts the torn line"
        raise JournalWriteError(
            f"cannot append to the tracking journal {self.path} ({error}); {state}. The job stops: it must not go on "
            "with writes it cannot record. Free space on the disk of output_dir (or fix the error), then continue "
            "with `cmpnas search --resume`, or send what is recorded with `cmpnas sync`"
        ) from error

    # -- writes --------------------------------------------------------------------------------
    def write(self, op: str, run: str, args: dict[str, Any], key: str | None = None) -> bool:
        """Record one write and try to send everything pending. ``key`` names a logical record
        that is written once per search: a second write with the same key is ignored (False)."""
        with self._lock:
            if key is not None and key in self._entries:
                return False
            self._sequence += 1
            entry_id = key or f"{self.session}/{self._sequence}"
            entry = {"entry": entry_id, "op": op, "run": run, "args": self._stage_files(op, entry_id, args)}
            if self.folder is None:
                self._entries[entry_id] = entry
                self._apply(entry)
                return True
            self._append(entry)
            self._entries[entry_id] = entry
            self._pending.append(entry_id)
            self.flush()
            return True

    def _stage_files(self, op: str, entry_id: str, args: dict[str, Any]) -> dict[str, Any]:
        """Artifacts are copied into the journal: the original may be gone when the write is sent."""
        if op != "log_artifact" or self.folder is None:
            return args
        source = Path(args["path"])
        target = self.folder / "artifacts" / entry_id.replace("/", "_").replace(":", "_") / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        # On disk before the entry that names it (the entry is fsynced): the copy, then the folders
        # that hold its new name and the new folder's.
        for path in (target, target.parent, target.parent.parent):
            fsync_path(path)
        return {**args, "path": str(target)}

    def flush(self, wait: bool = False) -> bool:
        """Send pending writes in order; False if some remain because the server is unreachable.
        Without ``wait`` a flush during an outage returns at once until the next probe is due."""
        with self._lock:
            if not self._pending:
                return True
            if not wait and time.monotonic() < self._next_try:
                return False
            while self._pending:
                entry_id = self._pending[0]
                entry = self._entries[entry_id]
                try:
                    self._apply(entry)
                except Exception as error:  # noqa: BLE001 - classified below
                    if is_transient(error):
                        self._note_outage(error)
                        return False
                    # MLflow refused it for good, or a local file it needs is gone: this write only.
                    logger.error("journal entry %s (%s %s) cannot be sent: %s: %s; marked rejected, the rest is sent",
                                 entry_id, entry["op"], entry["run"], type(error).__name__, redact_text(str(error)))
                    self._append({"rejected": entry_id, "error": redact_text(str(error))[:2000]})
                else:
                    self._append({"done": entry_id})
                    self._discard_staged(entry)
                    self.sent += 1
                self._pending.pop(0)
            if self._outage_logged:
                logger.warning("tracking server reachable again: the journal is sent")
            self._failures, self._next_try, self._outage_logged = 0, 0.0, False
            return True

    def drain(self, timeout_s: float) -> bool:
        """Keep sending until nothing is pending or ``timeout_s`` has passed; True when all is sent."""
        deadline = time.monotonic() + timeout_s
        while not self.flush(wait=True):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, max(0.2, self._next_try - time.monotonic())))
        return True

    def _note_outage(self, error: BaseException) -> None:
        self._failures += 1
        delay = min(self.policy.max_delay_s, self.policy.first_delay_s * 2 ** (self._failures - 1))
        self._next_try = time.monotonic() + delay
        if not self._outage_logged:
            cause = redacted_excerpt(str(error))
            if is_credential_error(error):
                logger.warning("tracking server refused this process's credentials (%s); %d writes kept in %s, the "
                               "search goes on: %s", cause, len(self._pending), self.path, CREDENTIALS_ADVICE)
            else:
                logger.warning("tracking server unreachable (%s); %d writes kept in %s, the search goes on",
                               cause, len(self._pending), self.path)
            self._outage_logged = True

    def _discard_staged(self, entry: dict[str, Any]) -> None:
        if entry["op"] == "log_artifact" and self.folder is not None:
            staged = Path(entry["args"]["path"])
            if self.folder in staged.parents:
                shutil.rmtree(staged.parent, ignore_errors=True)

    # -- sending one entry ---------------------------------------------------------------------
    def run_id(self, ref: str) -> str | None:
        """The MLflow run of a reference, looked up by tag when this process has not seen it."""
        if ref in self._resolved:
            return self._resolved[ref]
        trial_id = trial_id_of(ref)
        if trial_id is None:
            return ref
        runs = self.tracker.client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.`{PARENT_RUN_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
            max_results=2,
        )
        if len(runs) > 1:
            logger.error("trial %s has %d child runs under %s", trial_id, len(runs), self.parent_run_id)
        if runs:
            self._resolved[ref] = runs[0].info.run_id
        return self._resolved.get(ref)

    def _apply(self, entry: dict[str, Any]) -> None:
        op, ref, args = entry["op"], entry["run"], entry["args"]
        client = self.tracker.client
        if op == "create_run":
            if self.run_id(ref) is None:
                run = client.create_run(self.tracker.experiment_id, run_name=args["run_name"], tags=args["tags"])
                self._resolved[ref] = run.info.run_id
            return
        run_id = self.run_id(ref)
        if run_id is None:
            raise MlflowException(f"no MLflow run for {ref}", error_code=RESOURCE_DOES_NOT_EXIST)
        if op == "log_params":
            batch = [Param(key, value) for key, value in args["params"].items()]
            for start in range(0, len(batch), 100):
                client.log_batch(run_id, params=batch[start : start + 100])
        elif op == "log_metrics":
            batch = [Metric(key, value, timestamp, step) for key, value, timestamp, step in args["metrics"]]
            for start in range(0, len(batch), 1000):
                client.log_batch(run_id, metrics=batch[start : start + 1000])
        elif op == "set_tags":
            for key, value in args["tags"].items():
                client.set_tag(run_id, key, value)
        elif op == "set_status":
            if args["status"] == "RUNNING":
                client.update_run(run_id, status="RUNNING")
            else:
                client.set_terminated(run_id, status=args["status"], end_time=args.get("end_time"))
        elif op == "log_artifact":
            client.log_artifact(run_id, args["path"], args.get("artifact_path"))
        elif op == "log_inputs":  # MLflow keeps one input per (name, digest) and run: a replay adds nothing
            self.tracker.log_inputs(run_id, args["datasets"])
        else:
            raise ValueError(f"unknown journal operation {op!r}")

    # -- the MLflow calls of a search, journaled -----------------------------------------------
    def create_run(self, ref: str, run_name: str, tags: dict[str, str], key: str | None = None) -> bool:
        return self.write("create_run", ref, {"run_name": run_name, "tags": tags}, key)

    def log_params(self, ref: str, params: dict[str, Any], key: str | None = None) -> bool:
        return self.write("log_params", ref, {"params": {k: param_value(v) for k, v in params.items()}}, key)

    def log_metrics(self, ref: str, metrics: dict[str, Any], step: int = 0, key: str | None = None) -> bool:
        now = now_ms()
        rows = [[name, float(value), now, int(step)] for name, value in metrics.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)]
        return bool(rows) and self.write("log_metrics", ref, {"metrics": rows}, key)

    def set_tags(self, ref: str, tags: dict[str, str], key: str | None = None) -> bool:
        return self.write("set_tags", ref, {"tags": {k: str(v) for k, v in tags.items()}}, key)

    def set_status(self, ref: str, status: str, key: str | None = None) -> bool:
        RunStatus.from_string(status)  # a typo here is a bug, not an outage
        return self.write("set_status", ref, {"status": status, "end_time": now_ms()}, key)

    def log_artifact(self, ref: str, path: str | Path, artifact_path: str | None = None,
                     key: str | None = None) -> bool:
        return self.write("log_artifact", ref, {"path": str(path), "artifact_path": artifact_path}, key)

    def log_inputs(self, ref: str, datasets: list[dict[str, str]], key: str | None = None) -> bool:
        """Dataset inputs as ``dataset_inputs.data_split_inputs`` describes them (JSON fields, never data)."""
        return self.write("log_inputs", ref, {"datasets": [dict(fields) for fields in datasets]}, key)

"""Every log record redacted before any handler sees it: credentials never reach a log or terminal.

``RedactingFilter`` formats a record's message (``getMessage``: the format and its arguments), its
exception and its stack with ``redact_text`` and puts the redacted text in their place. Rules:

- ``install_log_redaction`` (called by the CLI before any command runs) installs it on the root
  logger's handlers, on ``logging.lastResort`` (the handler used when none is configured), on the
  loggers of cmpnas's packages and Ray and MLflow, and wraps the record factory, so that records
  reaching handlers added later (a library configuring its own) are redacted too. Installing it
  twice changes nothing.
- It also replaces ``sys.excepthook`` and ``threading.excepthook``: an unexpected error (a bug)
  still prints its whole traceback and exits with status 1, but redacted.
- Redaction fails closed: a record whose message cannot be formatted is replaced by a line naming
  its logger, never passed on raw.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback

from orchestrator.common.credentials import redact_text, redact_uri

# Loggers whose own handlers (if any) get the filter: cmpnas's packages, and the libraries that are
# handed the tracking URI or storage path.
REDACTED_LOGGERS = ("orchestrator", "workers", "search_space", "evaluators", "ray", "ray.tune", "ray.data", "mlflow")
# Environment variables that may hold a URI with credentials: their secrets are masked in every record.
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "CMPNAS_TRACKING_URI")
_REDACTED_MARK = "_cmpnas_redacted"


def redact_record(record: logging.LogRecord, keep_exc_info: bool = False) -> logging.LogRecord:
    """``record`` with its message, exception and stack text redacted in place (once per record). The
    exception's redacted text goes to ``exc_text``, which formatters print instead of formatting
    ``exc_info``; ``keep_exc_info`` keeps the exception itself for filters that look at it (a record
    just created), a handler's filter drops it."""
    if not getattr(record, _REDACTED_MARK, False):
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not pass the raw arguments on
            message = f"(a {record.levelname} record of logger {record.name} that could not be formatted)"
        record.msg, record.args = redact_text(message), ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        setattr(record, _REDACTED_MARK, True)
    if not keep_exc_info:
        record.exc_info = None
    return record


class RedactingFilter(logging.Filter):
    """A filter that lets every record through, redacted (``redact_record``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """The module's installation: handlers, loggers, the record factory; idempotent."""
    for name in URI_VARIABLES:
        if os.environ.get(name):
            redact_uri(os.environ[name])  # its secrets are known from now on
    handlers = [*logging.getLogger().handlers, *([logging.lastResort] if logging.lastResort else [])]
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        handlers += logger.handlers
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    _redact_uncaught_errors()
    factory = logging.getLogRecordFactory()
    if not getattr(factory, _REDACTED_MARK, False):
        def redacting_factory(*args, **kwargs) -> logging.LogRecord:
            return redact_record(factory(*args, **kwargs), keep_exc_info=True)

        setattr(redacting_factory, _REDACTED_MARK, True)
        logging.setLogRecordFactory(redacting_factory)


def _redact_uncaught_errors() -> None:
    """``sys.excepthook`` and ``threading.excepthook`` that print the traceback redacted."""
    if getattr(sys.excepthook, _REDACTED_MARK, False):
        return

    def redacting_excepthook(kind, error, trace) -> None:
        sys.stderr.write(redact_text("".join(traceback.format_exception(kind, error, trace))))

    def redacting_thread_excepthook(args) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "a thread"
        sys.stderr.write(f"Exception in thread {name}:\n" + redact_text(
            "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))))

    setattr(redacting_excepthook, _REDACTED_MARK, True)
    sys.excepthook, threading.excepthook = redacting_excepthook, redacting_thread_excepthook

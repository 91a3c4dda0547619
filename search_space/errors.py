"""``CmpnasError``: the one base of every error cmpnas reports to its user.

It lives in the lowest package so that every package can derive its errors from it (the packages
import one way: search_space <- evaluators <- workers <- orchestrator). Rules:

- an error a user can act on (bad config, data, model file, architecture, cluster, tracking
  server, output folder, export) subclasses ``CmpnasError``, beside the builtin class it is
  (``ValueError``, ``RuntimeError``, ...); its message names the cause, the field and the fix;
- the CLI catches ``CmpnasError`` alone, prints the message (credentials redacted) and exits with
  the error's ``exit_code``: 2, or a class's own (3: the records wait in the local journal for
  ``cmpnas sync``); anything else is a bug and keeps its traceback;
- an error that never reaches the user (caught inside cmpnas, e.g. one undecodable image) does not
  subclass it (``tests/test_errors.py`` lists those).
"""

from __future__ import annotations


class CmpnasError(Exception):
    """An error cmpnas reports to its user: the message says what is wrong and how to fix it."""

    # The CLI's exit status for this error.
    exit_code = 2

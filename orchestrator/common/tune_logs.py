"""Ray Tune log records that are not the user's concern, kept off the terminal.

One rule so far: the **staging race**. Tune writes each snapshot of the experiment (searcher and
callback states) into its driver staging folder (``.../driver_artifacts``) through temporary files,
``.<uuid>-tmp-<name>``, renamed when complete, while a background thread copies that folder to
``ray.storage_path``. A copy that listed a temporary file renamed before it was read fails with
``FileNotFoundError``, and Tune logs "Saving experiment state to storage ... failed" with the
traceback. It happens most when two snapshots follow each other closely, as when a search ends
early. Nothing is lost: the next snapshot's copy carries the renamed file, and Tune waits for the
final copy at the end of the experiment. Such records (and only those: a missing file that is not
one of Tune's temporary files, or any other error, still reaches the terminal) are logged at debug
level instead.
"""

from __future__ import annotations

import logging
import re

# The logger of ray/tune/execution/experiment_state.py, which reports failed copies to storage.
EXPERIMENT_STATE_LOGGER = "ray.tune.execution.experiment_state"
_TEMPORARY_STAGING_FILE = re.compile(r"driver_artifacts/(.+/)?\.[0-9a-f-]{36}-tmp-[^/]*$")


class StagingRaceFilter(logging.Filter):
    """Drops Tune's report of a copy that lost the staging race (see the module's rule); keeps the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, FileNotFoundError) and is_temporary_staging_file(error):
            logging.getLogger(__name__).debug("Tune copied its staging folder while a snapshot was written: %s",
                                              error)
            return False
        return True


def is_temporary_staging_file(error: FileNotFoundError) -> bool:
    # pyarrow reports "Failed to open local file '<path>'"; the OS error carries the path as filename.
    paths = [str(error.filename)] if error.filename else []
    paths += re.findall(r"'([^']+)'", str(error))
    return any(_TEMPORARY_STAGING_FILE.search(path) for path in paths)


def quiet_staging_races() -> None:
    """Install ``StagingRaceFilter`` on Tune's experiment-state logger, once per process."""
    logger = logging.getLogger(EXPERIMENT_STATE_LOGGER)
    if not any(isinstance(existing, StagingRaceFilter) for existing in logger.filters):
        logger.addFilter(StagingRaceFilter())

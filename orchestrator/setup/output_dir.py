"""The output folder of a job, checked writable before any work (``prepare_output_dir``)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import CmpnasConfig
from search_space.errors import CmpnasError


class OutputDirError(CmpnasError, RuntimeError):
    """The output directory cannot be created or written."""


def prepare_output_dir(config: CmpnasConfig) -> Path:
    folder = Path(config.output_dir).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".cmpnas-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise OutputDirError(f"output_dir={config.output_dir!r} is not writable ({error}); choose another folder") from error
    return folder

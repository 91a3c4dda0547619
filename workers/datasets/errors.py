"""The one error of the data: a data set that is missing, truncated, unreadable or unsuitable."""

from __future__ import annotations

from search_space.errors import CmpnasError


class DataError(CmpnasError, RuntimeError):
    """A data set that is missing, truncated, unreadable or unsuitable; the message says the fix."""

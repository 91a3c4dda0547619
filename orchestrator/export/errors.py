"""The one error type of export and verification; messages name the cause and the fix."""

from search_space.errors import CmpnasError


class ExportError(CmpnasError, RuntimeError):
    """An export or compatibility check that cannot be done, or that failed its checks."""

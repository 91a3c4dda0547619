"""The installed cmpnas version, recorded on every run (``tracking.tags.VERSION_TAG``) and every export."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def cmpnas_version() -> str:
    try:
        return version("cmpnas")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"

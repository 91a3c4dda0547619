"""The cmpnas driver side: configuration, CLI, Ray orchestration, MLflow tracking, Pareto, export."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def cmpnas_version() -> str:
    """The installed cmpnas version, recorded on every run (``tags.VERSION_TAG``) and export."""
    try:
        return version("cmpnas")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"

"""A registered query model as an export folder: ``cmpnas serve --model models:/NAME@ALIAS`` (or
``models:/NAME/VERSION``) serves what ``cmpnas export`` registered.

Rules:
* a reference is ``models:/<registered model>@<alias>`` or ``models:/<registered model>/<version>``;
  anything else starting with ``models:/`` is refused, naming ``--model`` and both forms;
* the registry version leads to its candidate run, where ``cmpnas export`` logged the whole export
  folder under ``export/`` (``orchestrator.export.registry``); that folder is downloaded, so the
  served model is checked against its manifest's SHA-256 exactly as a local export folder is;
* the tracking server is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``: one must be given, since
  MLflow's default (a ``./mlruns`` folder) is never where a team registers models;
* the download lands in ``$CMPNAS_CACHE/registry/<name>/<version>`` (default ``~/.cache/cmpnas``):
  into a scratch folder first, renamed into place once complete, so an interrupted download never
  leaves a folder that looks whole; a folder already there is reused (``read_manifest`` checks it
  on every use). A version's files never change in the registry, so the cache needs no expiry;
* each Serve replica resolves the reference on its own node (a cluster's nodes share no disk); the
  driver resolves it first, so a wrong name, alias or server fails before Ray starts.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from search_space.errors import CmpnasError
from workers.storage.cache_home import cmpnas_cache_home

REFERENCE_PREFIX = "models:/"
EXPORT_ARTIFACT = "export"  # where orchestrator.export.registry logs the export folder on the candidate run
_REFERENCE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))$")


class RegistryReferenceError(CmpnasError, ValueError):
    """A ``models:/`` reference that does not name a registered query model this server holds."""


@dataclass(frozen=True)
class RegistryReference:
    """A registered model and one of its aliases or versions."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> RegistryReference:
        found = _REFERENCE.match(text)
        if found is None:
            raise RegistryReferenceError(f"--model {text!r} is not a registry reference; write "
                                         "models:/NAME@ALIAS (e.g. models:/cmpnas-query@champion) or models:/NAME/VERSION")
        return cls(found["name"], found["alias"], found["version"])

    def __str__(self) -> str:
        return f"{REFERENCE_PREFIX}{self.name}" + (f"@{self.alias}" if self.alias else f"/{self.version}")


def is_registry_reference(text: str | Path) -> bool:
    return str(text).startswith(REFERENCE_PREFIX)


def tracking_uri_for(given: str | None) -> str:
    """``given``, else ``MLFLOW_TRACKING_URI``; refused when neither is set."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RegistryReferenceError("--model names a registered model, and no tracking server is given: pass "
                                     "--tracking-uri (e.g. http://mlflow:5000) or set MLFLOW_TRACKING_URI")
    return uri


def resolve_served_model(model: str, tracking_uri: str | None) -> tuple[Path, str | None, str | None]:
    """``cmpnas serve --model``: (the local export folder, the registry reference or None, the tracking URI
    a replica downloads it from, or None for a folder)."""
    if not is_registry_reference(model):
        return Path(model), None, None
    uri = tracking_uri_for(tracking_uri)
    return download_registered_export(model, uri), model, uri


def registry_cache_root() -> Path:
    return cmpnas_cache_home() / "registry"


def download_registered_export(reference: str, tracking_uri: str | None) -> Path:
    """The local export folder of the registry version ``reference`` names (see the module's rules)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    parsed, uri = RegistryReference.parse(reference), tracking_uri_for(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = (client.get_model_version_by_alias(parsed.name, parsed.alias) if parsed.alias
                   else client.get_model_version(parsed.name, parsed.version))
    except MlflowException as error:
        raise RegistryReferenceError(f"--model {reference}: {_registry_reason(client, parsed, error)}") from None
    folder = registry_cache_root() / parsed.name / str(version.version)
    if folder.is_dir():
        return folder
    if not version.run_id:
        raise RegistryReferenceError(f"--model {reference}: version {version.version} has no source run, so no export "
                                     "folder; register it with `cmpnas export`")
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{version.version}-", dir=folder.parent))
    try:
        downloaded = Path(client.download_artifacts(version.run_id, EXPORT_ARTIFACT, str(scratch)))
        try:
            os.replace(downloaded, folder)
        except OSError:
            if not folder.is_dir():  # else another replica on this node renamed its copy first
                raise
    except MlflowException as error:
        raise RegistryReferenceError(f"--model {reference}: the export folder of version {version.version} could "
                                     f"not be downloaded from run {version.run_id} ({error.message}); export it again "
                                     "with `cmpnas export`") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _registry_reason(client, parsed: RegistryReference, error) -> str:
    """What is missing: the model, or its alias or version (naming those it has)."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(parsed.name)
    except MlflowException:
        return f"no registered model {parsed.name!r} on this tracking server ({error.message})"
    if parsed.alias:
        aliases = sorted(registered.aliases or {})
        return f"model {parsed.name!r} has no alias {parsed.alias!r}; its aliases: {aliases or 'none'}"
    return f"model {parsed.name!r} has no version {parsed.version} ({error.message})"

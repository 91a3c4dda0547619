"""A new sqlite MLflow store gets its tables copied from one built once per test session.

Why: MLflow creates a new store's schema by running every alembic migration, 2-4 s per store on 2
CPUs, and nearly every test of a search or a tracker opens a store of its own (a fresh
``tmp_path``): over the suite, minutes. The copy is the same schema at the same revision (MLflow's
own ``_verify_schema`` still checks it), with no experiment in it: the store then creates its
``Default`` experiment itself, as on a new file. Only this test process is patched (searches run in
it); subprocesses and servers build their schema as users' do, so MLflow's own path stays tested.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest


def _build_template(folder: Path) -> Path:
    """An empty store's schema at MLflow's head revision, built by MLflow's own initialisation."""
    import mlflow.store.db.utils as db_utils
    import sqlalchemy

    path = folder / "schema.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        db_utils._initialize_tables(engine)
    finally:
        engine.dispose()
    return path


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch MLflow's table initialisation in this process (tracking and registry stores) for sqlite files."""
    import mlflow.store.db.utils as db_utils
    import mlflow.store.model_registry.sqlalchemy_store as registry_store

    template = _build_template(Path(tempfile.mkdtemp(prefix="cmpnas-mlflow-schema-")))
    original = db_utils._initialize_tables

    def initialize_from_template(engine) -> None:
        if engine.url.get_backend_name() != "sqlite" or not engine.url.database or not db_utils._is_empty_database(engine):
            original(engine)
            return
        raw = engine.raw_connection()
        try:
            with sqlite3.connect(template) as source:
                source.backup(raw.driver_connection)  # into the store's own connection: no file swapped under it
        finally:
            raw.close()

    monkeypatch.setattr(db_utils, "_initialize_tables", initialize_from_template)
    monkeypatch.setattr(registry_store, "_initialize_tables", initialize_from_template)

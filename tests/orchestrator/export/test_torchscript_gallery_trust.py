"""The TorchScript opt-in at the configuration, and the recorded fingerprint checked before a resumed
search, an export or verify-compat loads a TorchScript gallery model (``torch.jit.load`` never runs a
file other than the recorded one). Export takes the opt-in from its own user, never from the
configuration recorded on the tracking server."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow import MlflowClient

from orchestrator.config import ConfigError, validate_config
from orchestrator.export.errors import ExportError
from orchestrator.export.pipeline import ExportRequest, _search_config, _search_gallery
from orchestrator.setup.gallery import obtain_gallery, open_existing_gallery
from orchestrator.tracking.tags import GALLERY_FINGERPRINT_TAG
from workers.gallery.sources import GallerySourceError

# What loading a gallery model needs of the data: its channels and image size.
DATA = SimpleNamespace(in_chans=1, image_size=8)


class _Embedder(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :4]


def _config(path: Path, allow: bool = True):
    return validate_config({"gallery": {"source": "torchscript", "path": str(path), "allow_torchscript": allow,
                                        "input": {"size": 8, "channels": 1, "mean": [0.5], "std": [0.25]}}})


def test_the_configuration_names_the_opt_in_and_the_default_is_unaffected(tmp_path):
    with pytest.raises(ConfigError, match=r"gallery\.allow_torchscript.*torch\.jit\.load"):
        _config(tmp_path / "m.pt", allow=False)
    assert _config(tmp_path / "m.pt").gallery.allow_torchscript
    assert validate_config({}).gallery.allow_torchscript is False  # the quickstart needs no TorchScript


def test_resume_export_and_verify_check_the_recorded_fingerprint_before_loading(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    torch.jit.script(_Embedder()).save(str(path))
    config = _config(path)
    recorded = open_existing_gallery(config, DATA).fingerprint
    assert open_existing_gallery(config, DATA, expected_fingerprint=recorded).fingerprint == recorded
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("a file was loaded before its check"))
    other = "0" * 64
    with pytest.raises(GallerySourceError, match="was not loaded"):  # export, verify-compat
        open_existing_gallery(config, DATA, expected_fingerprint=other)
    with pytest.raises(GallerySourceError, match="was not loaded"):  # a resumed search
        obtain_gallery(config, DATA, "cpu", lambda line: None, expected_fingerprint=other)
    search = SimpleNamespace(data=SimpleNamespace(tags={GALLERY_FINGERPRINT_TAG: other}),
                             info=SimpleNamespace(run_id="search"))
    with pytest.raises(ExportError, match="was not loaded"):  # export, with the parent run's tag
        _search_gallery(config, DATA, None, search)


def test_export_takes_the_opt_in_from_its_user_not_from_the_tracking_server(tmp_path):
    """A recorded configuration saying allow_torchscript: true is what anyone who can write to the
    tracking server could write: export replaces it with its own --allow-torchscript."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "artifacts")))
    recorded = {"gallery": {"source": "torchscript", "path": "/elsewhere/m.pt", "allow_torchscript": True}}
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    client.log_artifact(run.info.run_id, str(tmp_path / "config.json"))
    tracker = SimpleNamespace(client=client)
    request = ExportRequest(tracking_uri="", experiment="e", model_name="m")
    with pytest.raises(ConfigError, match="gallery.allow_torchscript"):
        _search_config(tracker, run.info.run_id, request)
    assert _search_config(tracker, run.info.run_id, replace(request, allow_torchscript=True)).gallery.allow_torchscript

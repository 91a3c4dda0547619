"""An exported query model: ONNX, TorchScript and safetensors beside a compatibility manifest.

The exported graph takes float32 images scaled to [0, 1] (pixel / 255) at the data's image size
and does the rest itself: normalisation and resizing to the candidate's resolution, exactly as
in training. A consumer needs no cmpnas code, only the manifest's input description.

The manifest's ``metrics`` are the recorded figures on the data it records (``data``), the data the
export is checked on and ``cmpnas verify-compat`` measures on. With a validation split
(``data.validation_size``) those are the held-out query/gallery splits: the search's
``final_heldout_*`` and ``paragon_heldout_*``, with the validation scores it ranked on beside them
(``metrics.validation``); without one, the search's ``final_*`` and ``paragon_*``
(``recorded_metric_keys``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from evaluators import FLOPS_CONVENTION
from evaluators.latency import export_onnx
from orchestrator.common.version import cmpnas_version
from orchestrator.export.errors import ExportError
from search_space import ArchSpec, build_query_model
from workers.storage.file_digest import file_sha256
from workers.training.preprocess import normalize_and_resize

MANIFEST_FILE = "compatibility.json"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
WEIGHTS_FILE = "model.safetensors"
# The gallery model the query model is compatible with: its identity and where it was (never the model).
GALLERY_FILE = "gallery.json"
# 2: ``data`` (the data the export was checked on), ``gallery.location`` and ``gallery.json``.
# 3: ``metrics`` on the held-out splits when the search had a validation split (``metrics.split``).
MANIFEST_VERSION = 3


def recorded_metric_keys(candidate_metrics: dict[str, float]) -> tuple[str, str]:
    """The prefixes of a candidate's and of its search's figures on the data an export is checked on
    (the full data's query/gallery): held out when the search had a validation split, since its
    ``final_cross_*`` are then scores on the validation halves."""
    if "final_heldout_cross_r1" in candidate_metrics:
        return "final_heldout_", "paragon_heldout_"
    return "final_", "paragon_"


def recorded_cross_r1(candidate_metrics: dict[str, float]) -> float:
    """The candidate's recorded cross-model R@1 on the data an export is checked on."""
    return candidate_metrics[recorded_metric_keys(candidate_metrics)[0] + "cross_r1"]


class DeployableQueryModel(nn.Module):
    """Preprocessing plus the query network, as one module to export."""

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], resolution: int):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.resolution = resolution

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(normalize_and_resize(images, self.mean, self.std, self.resolution))


def load_candidate(weights_path: Path, spec_path: Path) -> tuple[ArchSpec, nn.Module]:
    from safetensors.torch import load_file

    spec = ArchSpec.from_json(spec_path.read_text())
    network = build_query_model(spec)
    try:
        network.load_state_dict(load_file(str(weights_path)))
    except Exception as error:  # noqa: BLE001 - safetensors and torch raise several types
        raise ExportError(f"candidate weights {weights_path} do not load into {spec.arch_id}: {error}") from error
    return spec, network.eval()


def write_formats(model: DeployableQueryModel, folder: Path, input_shape: tuple[int, int, int]) -> None:
    """ONNX (dynamic batch), TorchScript (traced) and safetensors weights of the network."""
    from safetensors.torch import save_file

    # The exporter whose graph every candidate's latency was timed on (evaluators.latency).
    export_onnx(model, input_shape, folder / ONNX_FILE)
    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
    traced.save(str(folder / TORCHSCRIPT_FILE))
    state = {name: tensor.detach().contiguous() for name, tensor in model.network.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))


def gallery_record(identity: dict[str, Any], location: str, search_run_id: str) -> dict[str, Any]:
    """``gallery.json`` of an export: the gallery model's identity (``GalleryModel.identity``) and
    its location when exported (a path or URI, ``redact_uri``-ed), never the model itself."""
    return {**identity, "location": location, "search_run_id": search_run_id}


@dataclass(frozen=True)
class MeasuredWith:
    """What an export was checked with: the data's image size and statistics (the query model's own
    preprocessing), the data's identity (``data_identity.data_identity``), and the gallery model's
    identity (``GalleryModel.identity``: source, model, fingerprint, embedding size and input spec)
    with its ``location``."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data: dict[str, Any]
    gallery: dict[str, Any]


def build_manifest(spec: ArchSpec, runs: tuple[Any, Any], measured: MeasuredWith, folder: Path) -> dict[str, Any]:
    """The compatibility manifest of ``spec`` exported into ``folder``; ``runs``: its (candidate, search) runs."""
    candidate_run, search_run = runs
    image_size, mean, std = measured.image_size, measured.mean, measured.std
    metrics = candidate_run.data.metrics
    search_metrics = search_run.data.metrics
    final, paragon = recorded_metric_keys(metrics)
    recorded = {
        "split": "held_out" if final == "final_heldout_" else "query_gallery",
        "cross_model": {"r1": metrics[final + "cross_r1"], "r5": metrics.get(final + "cross_r5"),
                        "map": metrics[final + "cross_map"]},
        "homogeneous": {"r1": metrics.get(final + "homo_r1"), "r5": metrics.get(final + "homo_r5"),
                        "map": metrics.get(final + "homo_map")},
        "paragon": {"r1": search_metrics.get(paragon + "r1"), "map": search_metrics.get(paragon + "map")},
    }
    if final == "final_heldout_":  # what the search ranked on, never what the model is judged by
        recorded["validation"] = {"cross_model": {"r1": metrics["final_cross_r1"], "map": metrics["final_cross_map"]},
                                  "paragon": {"r1": search_metrics.get("paragon_r1"),
                                              "map": search_metrics.get("paragon_map")}}
    return {
        "manifest_version": MANIFEST_VERSION,
        "cmpnas_version": cmpnas_version(),
        "mlflow": {"candidate_run_id": candidate_run.info.run_id, "search_run_id": search_run.info.run_id},
        "gallery": measured.gallery,
        "data": measured.data,
        "embedding": {"dim": spec.embed_dim, "normalization": "l2", "similarity": "inner product (cosine)"},
        "input": {
            "layout": "NCHW", "dtype": "float32", "channels": spec.in_chans, "height": image_size, "width": image_size,
            "scale": "pixel / 255 (values in [0, 1])",
            "inside_the_model": f"normalise with mean {list(mean)} and std {list(std)}, then bilinear resize "
                                f"(antialiased) to {spec.resolution}x{spec.resolution}",
            "mean": list(mean), "std": list(std), "model_resolution": spec.resolution,
        },
        "architecture": spec.to_dict(),
        "arch_id": spec.arch_id,
        "cost": {
            "flops": int(metrics["final_flops"]), "mflops": metrics["final_mflops"],
            "flops_convention": FLOPS_CONVENTION,
            "flops_skipped_ops": json.loads(candidate_run.data.params.get("flops_skipped_ops", "{}") or "{}"),
            "params": int(metrics["final_params"]), "latency_ms_cpu_batch1": metrics.get("final_latency_ms"),
            "latency_method": candidate_run.data.params.get("latency_method", ""),
            "cost_reduction_vs_paragon": metrics.get("final_cost_reduction"),
        },
        "metrics": recorded,
        "files": {name: file_sha256(folder / name) for name in (ONNX_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE, GALLERY_FILE)},
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an export folder, after checking every file against its recorded SHA-256.

    The manifest must list ``model.onnx`` (what every consumer loads), and each name it lists must be
    a file inside the folder: a name that is absolute, holds ``..`` or leads out through a link is
    refused, so an altered manifest can neither skip the model's check nor point at other files."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(f"{folder} is not a cmpnas export: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError(f"'files' is a {type(files).__name__}, not a mapping of names to SHA-256")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ExportError(f"{path} is corrupt ({error}); export the model again") from error
    if ONNX_FILE not in files:
        raise ExportError(f"{path} does not list {ONNX_FILE} in 'files', so the model cannot be checked against its "
                          "SHA-256: the manifest is incomplete or was altered; export the model again")
    for name, expected in files.items():
        listed = _listed_file(folder, name, path)
        if not listed.is_file():
            raise ExportError(f"{listed} is missing; the export is incomplete, export it again")
        if file_sha256(listed) != expected:
            raise ExportError(f"{listed} does not match its SHA-256 in {MANIFEST_FILE}: the export is corrupt")
    return manifest


def _listed_file(folder: Path, name: object, manifest: Path) -> Path:
    """``folder/name`` for a name of the manifest's ``files``, refused unless it stays inside ``folder``."""
    relative = PurePosixPath(name) if isinstance(name, str) and name and "\\" not in name else None
    inside = relative is not None and not relative.is_absolute() and ".." not in relative.parts
    if inside:
        listed = folder / relative
        inside = Path(folder).resolve() in listed.resolve().parents
    if not inside:
        raise ExportError(f"{manifest} lists {name!r} in 'files', which is not a file inside the export folder "
                          "(absolute, with '..', or through a link out of it): the manifest is corrupt or was "
                          "altered; export the model again")
    return listed


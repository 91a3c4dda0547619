"""The methods' recipes: one run of one method at one budget with one seed, resumable and cached in
``<workdir>/<protocol>/runs/<method>/<budget>/seed<k>/``.

* ``cmpnas`` and ``random``: ``cmpnas search`` itself (a subprocess, ``--resume-if-unfinished``) on
  the configuration ``search_config.method_config_tree`` writes (``config.yaml``): N candidates
  under the budget trained on the trials' subset, ranked on validation, the front trained again on
  the whole train split with the final schedule (``search.final_training``). The run's query model
  is the final training of the validation-best candidate of the front (highest ``search.metric``);
  its weights are read back from the final training's MLflow run, as ``cmpnas export`` reads them;
* ``fixed_bct`` and ``independent``: the budget's fixed architecture (``budgets.fixed_architecture``:
  a timm network, the product's ``GalleryEmbeddingNet``) trained by the product's compatibility
  training (``workers.compatibility``) against the frozen paragon with the base config's losses
  (``independent``: the protocol's own-classifier loss alone) and the final schedule: the final
  epochs, the trials' batch size, learning rate and weight decay, seeded by the run's seed, on the
  whole train split; resumable after every epoch (``training_state.pt``);
* a run is finished when its ``result.json`` exists: it is never run again; every run writes its
  held-out figures, architecture, run ids, MFLOPs, parameters and latency (``measure``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from orchestrator.export.package import load_candidate
from orchestrator.results.final_training import final_training_runs
from orchestrator.results.front import collect_report
from orchestrator.search.state import SearchState
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import SOURCE_RUN_TAG
from workers.compatibility.candidate import fine_tune_candidate
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun
from workers.gallery.model import GalleryArchitecture, GalleryEmbeddingNet
from workers.storage.durable_write import replaced_durably, write_text_durably
from workers.training.fit import EpochHooks, OptimSettings
from workers.trial_report import MODEL_FILE, SPEC_FILE

from budgets import Budget, FixedArchitecture
from measure import HeldOut, measure_query_model
from protocol import REPO, Protocol, ProtocolError, code_commit
from search_config import method_config_tree, query_training, write_method_config
from splits import ProtocolData

METHODS = ("cmpnas", "random", "fixed_bct", "independent")
RESULT_FILE = "result.json"
# cmpnas search's exit status when the search finished with fewer candidates than asked (it still finished).
SEARCH_ENDED_SHORT = 4


@dataclass(frozen=True)
class RunKey:
    method: str
    budget: Budget
    seed: int

    @property
    def slug(self) -> str:
        return self.budget.name.replace("/", "-").replace(" ", "-")

    def folder(self, workdir: Path) -> Path:
        return workdir / "runs" / self.method / self.slug / f"seed{self.seed}"


@dataclass(frozen=True)
class RunInputs:
    """What a run reads: the protocol and its work folder, its data, the paragon's folder and held-out
    embeddings, the device."""

    protocol: Protocol
    workdir: Path
    data: ProtocolData
    paragon_folder: Path
    held_out: HeldOut
    device: torch.device


def finished_result(folder: Path) -> dict | None:
    path = folder / RESULT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_result(key: RunKey, folder: Path, inputs: RunInputs, figures: dict) -> dict:
    result = {**inputs.protocol.identity(), "code_commit": code_commit(), "method": key.method,
              "budget": key.budget.name, "budget_mflops": key.budget.mflops, "seed": key.seed,
              "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **figures}
    write_text_durably(folder / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return result


def run_search_method(key: RunKey, inputs: RunInputs, search_checkpoint: Path, log) -> dict:
    """``cmpnas`` or ``random`` (module docstring); returns the run's result."""
    folder = key.folder(inputs.workdir)
    tree = method_config_tree(inputs.protocol, key.method, key.budget.mflops, key.seed, folder, search_checkpoint)
    config = write_method_config(tree, folder / "config.yaml")
    state = SearchState.load(config.output_dir)
    if state is None or state.phase != "finished":
        command = [sys.executable, "-m", "orchestrator.cli", "search", "--config", str(folder / "config.yaml"),
                   "--resume-if-unfinished"]
        log(f"{key.method} {key.budget.name} seed {key.seed}: cmpnas search (log: {folder / 'search.log'})")
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                 os.environ.get("PYTHONPATH")]))}
        with (folder / "search.log").open("a") as output:
            status = subprocess.run(command, cwd=folder, env=environment, stdout=output, stderr=subprocess.STDOUT).returncode
        state = SearchState.load(config.output_dir)
        if status not in (0, SEARCH_ENDED_SHORT) or state is None or state.phase != "finished":
            raise ProtocolError(f"cmpnas search of {folder} ended with status {status} (phase "
                                f"{getattr(state, 'phase', None)}); see {folder / 'search.log'}; rerun to resume")
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    report = collect_report(tracker, state.parent_run_id)
    if not report.front:
        raise ProtocolError(f"the search of {folder} has no candidate on its front (see {folder / 'search.log'})")
    best = max(report.front, key=lambda row: row.score)
    finals = {run.data.tags.get(SOURCE_RUN_TAG): run for run in final_training_runs(tracker, state.parent_run_id)}
    if best.run_id not in finals:
        raise ProtocolError(f"the validation-best candidate {best.run_id} of {folder} has no finished final training")
    final = finals[best.run_id]
    downloaded = Path(tracker.client.download_artifacts(final.info.run_id, "model", str(folder / "final_model")))
    spec, network = load_candidate(downloaded / MODEL_FILE, downloaded / SPEC_FILE)
    figures = measure_query_model(network, spec.resolution, inputs.held_out, folder, inputs.device)
    architecture = {"arch_id": spec.arch_id, "spec": json.loads(spec.to_json())}
    runs = {"search": state.parent_run_id, "candidate": best.run_id, "final_training": final.info.run_id,
            "tracking_uri": config.tracking.uri, "candidates": len(report.candidates), "front": len(report.front)}
    return write_result(key, folder, inputs, {**figures, "architecture": architecture, "runs": runs,
                                               "validation_score": {report.scoring.metric: best.score}})


def run_fixed_method(key: RunKey, inputs: RunInputs, fixed: FixedArchitecture, gallery, log) -> dict:
    """``fixed_bct`` or ``independent`` (module docstring); ``gallery``: the paragon's selection embeddings."""
    folder = key.folder(inputs.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    protocol, selection = inputs.protocol, inputs.data.selection
    training = query_training(protocol).training
    losses = (dict(training.loss_weights) if key.method == "fixed_bct"
              else dict(protocol.spec["methods"]["independent"]["losses"]))
    arch = GalleryArchitecture(backbone=fixed.backbone, embed_dim=int(protocol.spec["paragon"]["embed_dim"]),
                               num_classes=selection.num_classes, in_chans=selection.in_chans,
                               image_size=fixed.resolution, stem_stride=fixed.stem_stride)
    torch.manual_seed(key.seed)
    network = GalleryEmbeddingNet(arch).to(inputs.device)
    if training.channels_last:  # as a trial's candidate (workers.trial): the batches come channels-last
        network = network.to(memory_format=torch.channels_last)
    optim = OptimSettings(epochs=int(protocol.spec["schedule"]["final_epochs"]), batch_size=training.batch_size,
                          lr=training.lr, weight_decay=training.weight_decay, seed=key.seed)
    settings = CompatibilityTrainingSettings(optim=optim, loss_weights=losses, channels_last=training.channels_last,
                                             loss_parameters={name: dict(values) for name, values
                                                              in training.loss_parameters.items() if name in losses})
    state_path = folder / "training_state.pt"
    resume = torch.load(state_path, map_location=inputs.device, weights_only=True) if state_path.exists() else None

    def sink(state: dict) -> None:
        with replaced_durably(state_path) as temporary:
            torch.save(state, temporary)

    def on_epoch(epoch: int, stats: dict) -> None:
        log(f"{key.method} {key.budget.name} seed {key.seed}: epoch {epoch}/{optim.epochs} loss {stats['loss']:.4f}")

    if resume is not None:
        log(f"{key.method} {key.budget.name} seed {key.seed}: resuming after epoch {resume.get('epoch')}")
    fine_tune_candidate(network, fixed.resolution, settings, TrainingRun(
        selection, gallery, inputs.device, hooks=EpochHooks(on_epoch=on_epoch, state_sink=sink, resume=resume)))
    figures = measure_query_model(network, fixed.resolution, inputs.held_out, folder, inputs.device)
    architecture = {"arch_id": f"{fixed.backbone}-s{fixed.stem_stride}-r{fixed.resolution}",
                    "backbone": fixed.backbone, "stem_stride": fixed.stem_stride, "resolution": fixed.resolution}
    return write_result(key, folder, inputs, {**figures, "architecture": architecture, "loss_weights": losses,
                                               "runs": {"trained_here": str(folder)}, "epochs": optim.epochs})

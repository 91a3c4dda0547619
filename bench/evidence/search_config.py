"""The product configuration of one run of a method: the protocol's base config with the protocol's
data, paragon, budget, schedule, method and seed written into it, validated by the product's schema.

Rules:
* every method of a protocol starts from the same tree: ``base_config`` (its losses, trial schedule
  and evolution settings at the protocol's commit), then the protocol's data (the same splits as the
  paragon's: ``splits.protocol_split_sizes``, ``data.seed``, ``data.validation_size``, the trials'
  ``data.trial_train_size``), ``evaluation.held_out`` and the selection metric, the frozen paragon
  (``gallery.checkpoint``), the final schedule (``search.final_training.epochs``) and the seed
  (``search.seed``: proposals and candidate training; final training keeps it);
* ``cmpnas`` and ``random`` differ only in ``search.strategy`` (and their seed), so the random
  baseline draws from the same budgeted space (``search.max_mflops``) with the search's own
  sampler and gets the same trials and the same final training;
* each run has its own output folder and MLflow store (sqlite) inside its run folder, so a run
  resumes alone (``cmpnas search --resume-if-unfinished``) and two runs never share records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import CmpnasConfig, validate_config

from protocol import REPO, Protocol
from splits import protocol_split_sizes

SEARCH_METHODS = ("cmpnas", "random")


def base_config_tree(protocol: Protocol) -> dict[str, Any]:
    """The protocol's ``base_config`` file as a tree (relative to the repository)."""
    return yaml.safe_load((REPO / protocol.spec["base_config"]).read_text()) or {}


def query_training(protocol: Protocol) -> CmpnasConfig:
    """The base config validated: its ``training`` section is every method's losses and schedule."""
    return validate_config(base_config_tree(protocol), source=protocol.spec["base_config"])


def method_config_tree(protocol: Protocol, method: str, budget_mflops: float, seed: int, run_folder: Path,
                       paragon_checkpoint: Path) -> dict[str, Any]:
    """The configuration tree of one search run (module rules); ``method``: cmpnas or random."""
    if method not in SEARCH_METHODS:
        raise ValueError(f"{method!r} is not a search method of the evidence benchmark ({SEARCH_METHODS})")
    spec = protocol.spec
    data, paragon, chosen = spec["data"], spec["paragon"], spec["methods"][method]
    tree = base_config_tree(protocol)
    tree["data"] = {**tree.get("data", {}), "source": data["source"], **protocol_split_sizes(data),
                    "seed": int(data["seed"]), "validation_size": int(data["validation_size"]),
                    # Never capped: the protocol's validation split is exactly the paragon's.
                    "validation_max_fraction": 1.0, "trial_train_size": data.get("trial_train_size")}
    tree["gallery"] = {**tree.get("gallery", {}), "checkpoint": str(paragon_checkpoint),
                       "backbone": paragon["backbone"], "embed_dim": int(paragon["embed_dim"]),
                       "stem_stride": int(paragon["stem_stride"])}
    tree["evaluation"] = {**tree.get("evaluation", {}), "held_out": spec["evaluation"]["held_out"],
                          "task": spec["evaluation"]["task"]}
    search = dict(tree.get("search", {}))
    search.update(strategy=chosen["strategy"], num_candidates=int(chosen["num_candidates"]), seed=int(seed),
                  metric=spec["evaluation"]["selection_metric"], max_mflops=float(budget_mflops),
                  budgets_mflops=None, final_training={"epochs": int(spec["schedule"]["final_epochs"])})
    tree["search"] = search
    tree["training"] = {**tree.get("training", {}),
                        "augmentation": {"enabled": "on" if spec["schedule"]["query_augmentation"] else "off"}}
    tree["tracking"] = {"uri": f"sqlite:///{run_folder / 'mlflow.db'}",
                        "experiment": f"evidence-{protocol.name}-{method}"}
    tree["output_dir"] = str(run_folder / "search")
    return tree


def write_method_config(tree: dict[str, Any], path: Path) -> CmpnasConfig:
    """Validate ``tree`` with the product's schema, then write it where ``cmpnas search --config`` reads it."""
    config = validate_config(tree, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return config

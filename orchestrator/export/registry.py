"""MLflow Model Registry: one model version per exported candidate, manifest included."""

from __future__ import annotations

import math
from pathlib import Path

from mlflow.exceptions import MlflowException

from orchestrator.tags import GALLERY_FINGERPRINT_TAG
from orchestrator.tracking import SearchTracker


def alias_for(mflops: float, budget: float | None) -> str:
    """Aliases allow letters, digits, '-' and '_': budgets and FLOPs are written in kFLOPs."""
    if budget is not None:
        return f"budget-{math.ceil(budget * 1000)}kflops"
    return f"pareto-{math.ceil(mflops * 1000)}kflops"


def register_export(tracker: SearchTracker, model_name: str, candidate_run, folder: Path, manifest: dict,
                    budget: float | None) -> tuple[str, str]:
    """Log the export folder on the candidate run and register it; returns (version, alias)."""
    client = tracker.client
    run_id = candidate_run.info.run_id
    client.log_artifacts(run_id, str(folder), "export")
    try:
        client.create_registered_model(model_name, description="cmpnas query models, compatible with a gallery model")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        model_name, source=f"{candidate_run.info.artifact_uri}/export", run_id=run_id,
        tags={GALLERY_FINGERPRINT_TAG: manifest["gallery"]["fingerprint"], "arch_id": manifest["arch_id"],
              "mflops": f"{manifest['cost']['mflops']:.4f}",
              "cross_r1": f"{manifest['metrics']['cross_model']['r1']:.2f}"},
        description=f"{manifest['arch_id']}: {manifest['cost']['mflops']:.2f} MFLOPs, cross-model R@1 "
                    f"{manifest['metrics']['cross_model']['r1']:.2f}",
    )
    alias = alias_for(manifest["cost"]["mflops"], budget)
    client.set_registered_model_alias(model_name, alias, version.version)
    return version.version, alias

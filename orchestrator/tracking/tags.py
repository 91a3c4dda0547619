"""Every MLflow tag cmpnas writes or searches by, in one place.

Rules:
* a run's kind is its ``ROLE_TAG``: ``ROLE_SEARCH`` (a search's parent run), ``ROLE_CANDIDATE``
  (one trial), ``ROLE_FINAL_TRAINING`` (a front candidate trained again, ``SOURCE_RUN_TAG`` naming
  it), ``ROLE_SUPERNET`` (a supernet training);
* child runs point at their parent with MLflow's own ``PARENT_RUN_TAG``, so the MLflow UI nests them;
* boolean tags hold the strings ``"true"`` / ``"false"``;
* MLflow's own tags (``mlflow.*``) are written only with the values MLflow's UI reads: the experiment
  kind, the run description, a dataset input's context (see docs/mlflow.md);
* tags are what later commands (``cmpnas pareto``, ``export``, a resumed search) look runs up by,
  so a name here is part of the recorded format: rename one only with a migration.
"""

from __future__ import annotations

# -- what a run is and where it belongs ------------------------------------------------------------
PARENT_RUN_TAG = "mlflow.parentRunId"
ROLE_TAG = "cmpnas.role"
ROLE_SEARCH = "search"
ROLE_CANDIDATE = "candidate"
ROLE_SUPERNET = "supernet"
# A front candidate trained again with the longer schedule of search.final_training, after the search.
ROLE_FINAL_TRAINING = "final_training"
# On a final-training run: the candidate run (as searched) it retrains.
SOURCE_RUN_TAG = "cmpnas.source_run_id"
# The search's own id (search_state.json): finds the parent run again after a crash before it was saved.
SEARCH_ID_TAG = "cmpnas.search_id"
# The Tune trial of a candidate run: a retried or resumed trial re-attaches to its run by it.
TRIAL_ID_TAG = "cmpnas.trial_id"

# -- how a candidate ended ----------------------------------------------------------------------------
RETRIES_TAG = "cmpnas.retries"
LAST_RETRY_ERROR_TAG = "cmpnas.last_retry_error"
ERROR_TAG = "error"
# A trial the scheduler (ASHA) stopped before its last epoch: FINISHED, but without final metrics.
STOPPED_EARLY_TAG = "cmpnas.stopped_early"
# A child run no trial will finish (its driver died before Tune recorded the trial).
SUPERSEDED_TAG = "cmpnas.superseded"
# On a candidate with a final result: "passed" or "failed", its compatibility check
# (``workers.trial_report.Scoring.verdict``); absent when there was nothing to judge.
COMPATIBILITY_TAG = "cmpnas.compatibility"

# -- how a search ended ---------------------------------------------------------------------------------
# On a parent run that ended with fewer candidates than search.num_candidates: why, and what to change.
SHORTFALL_TAG = "cmpnas.shortfall"
# On a parent run whose finished candidates include some that failed the compatibility check: how
# many (on the front, too), the rule, the likely causes and the settings to change.
COMPATIBILITY_FAILURES_TAG = "cmpnas.compatibility_failures"

# -- what the search selected ---------------------------------------------------------------------------
PARETO_TAG = "pareto"
# On a candidate: the budget aliases of a budget sweep it wins (comma-separated).
BUDGET_TAG = "budget_best"

# -- provenance, on parent and supernet runs --------------------------------------------------------
GALLERY_FINGERPRINT_TAG = "gallery_fingerprint"
SUPERNET_FINGERPRINT_TAG = "supernet_fingerprint"
VERSION_TAG = "cmpnas_version"
DATASET_TAG = "dataset"
FLOPS_CONVENTION_TAG = "flops_convention"
# The gallery model as its source describes it ("resnet10t", "timm:resnet18", "onnx:gallery.onnx").
GALLERY_BACKBONE_TAG = "gallery_backbone"
GALLERY_SOURCE_TAG = "gallery_source"
TRAINING_MODE_TAG = "training_mode"
SEARCH_SPACE_TAG = "search_space"

# -- how MLflow's UI shows a search (docs/mlflow.md) ------------------------------------------------------
# An experiment's kind: "custom_model_development" is MLflow 3's model-training experiment (runs
# table), as opposed to "genai_development" (traces overview). Set on every cmpnas experiment.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
# A run's description (markdown), shown at the top of its page: the parent run's holds the front.
DESCRIPTION_TAG = "mlflow.note.content"
# A dataset input's role in the run: "train", "query" or "gallery" (MLflow's "mlflow.data.context").
DATASET_CONTEXT_TAG = "mlflow.data.context"
# On an MLflow logged model (an exported query model): its registry versions, as MLflow writes them
# (JSON list of {"name", "version"}), so the model's page links to the registry.
MODEL_VERSIONS_TAG = "mlflow.modelVersions"

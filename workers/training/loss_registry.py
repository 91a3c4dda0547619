"""The names of the compatibility losses, what a search weighs them by default, and their registry.

The configuration checks ``training.loss_weights`` against ``LOSSES`` without importing the losses
(``search_space.registry``: built-in names are declared with the module that registers them); the
classes themselves are in ``workers.training.losses``.
"""

from __future__ import annotations

from search_space.registry import Registry

# One default for the config and the trainers alike, so that a trainer called directly (a bench
# script, a test) trains as a search does.
DEFAULT_LOSS_WEIGHTS = {"own_classifier": 1.0, "bct_influence": 1.0, "cosine_alignment": 10.0}

LOSS_PARAMETERS_FIELD = "training.loss_parameters"

# The built-in losses that read no labels (``uses_labels`` False): the only ones the unlabelled pool
# (data.unlabelled) trains through.
LABEL_FREE_LOSSES = ("cosine_alignment", "l2_regression", "relational")

BUILTIN_LOSSES = ("own_classifier", "bct_influence", "cosine_alignment", "cross_contrastive", "l2_regression",
                  "relational")
# Of ``CompatibilityLoss`` subclasses (not named here: the classes import this module).
LOSSES: Registry[type] = Registry(
    "loss", "training.loss_weights", builtins={name: "workers.training.losses" for name in BUILTIN_LOSSES})


def register_loss(loss: type) -> type:
    """Register ``loss`` under its ``name``, the key that ``training.loss_weights`` gives it a weight by."""
    return LOSSES.register()(loss)

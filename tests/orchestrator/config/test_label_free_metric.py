"""search.metric: cross_agreement, the label-free neighbour agreement (evaluators.agreement), ranks only where
trials compute it (evaluation.agreement_k)."""

import pytest

from orchestrator.config import ConfigError, load_config


def test_ranking_on_agreement_needs_its_k_and_names_the_field():
    with pytest.raises(ConfigError, match="evaluation.agreement_k"):
        load_config(overrides=["search.metric=cross_agreement"])


@pytest.mark.parametrize("task", ["retrieval", "verification"])
def test_any_task_may_rank_on_agreement_with_its_k(task):
    config = load_config(overrides=["search.metric=cross_agreement", "evaluation.agreement_k=10",
                                    f"evaluation.task={task}"])
    assert config.scoring.metric == "cross_agreement" and config.scoring.homogeneous == "homo_agreement"


def test_ranking_on_agreement_refuses_early_stopping_the_gallery_model_on_it():
    # The gallery model against itself agrees fully every epoch: patience would stop it at once, on nothing.
    with pytest.raises(ConfigError, match="unset gallery.patience"):
        load_config(overrides=["search.metric=cross_agreement", "evaluation.agreement_k=10", "gallery.patience=2",
                               "data.validation_size=1000"])

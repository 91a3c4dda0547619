"""Final training stays the longer schedule when training.min_steps raises the trials' epochs (issue 27)."""

from orchestrator.config import load_config
from orchestrator.search.final_training import final_training_epochs


def test_final_training_is_raised_by_the_factor_the_trials_were():
    config = load_config(None, ["training.epochs=3", "search.final_training.epochs=9", "training.batch_size=256"])
    # 10,000 images: 40 steps an epoch, 120 in 3 epochs: nothing raised.
    assert config.training.epochs_for(10000) == 3 and final_training_epochs(config, 10000) == 9
    # 1,000 images: 4 steps an epoch; min_steps 120 raises the trials to 30 epochs, final training to 90.
    trials = config.training.epochs_for(1000)
    assert trials == 30
    assert final_training_epochs(config, 1000) == 90 > trials


def test_without_min_steps_final_training_is_as_configured():
    config = load_config(None, ["training.min_steps=0", "search.final_training.epochs=9"])
    assert final_training_epochs(config, 1000) == 9

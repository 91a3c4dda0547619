import re

import pytest

from orchestrator.config import DEFAULT_CONFIG, ConfigError, flatten_fields, load_config, validate_config
from search_space import list_spaces


def test_embedded_default_loads_and_overrides_apply():
    config = load_config(None, ["search.num_candidates=16", "training.loss_weights={own_classifier: 1}"])
    assert config.search.num_candidates == 16
    assert config.training.loss_weights == {"own_classifier": 1}
    assert load_config(DEFAULT_CONFIG).search.num_candidates >= 8


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"search": {"stratgy": "random"}}, r"search.stratgy: unknown field; allowed fields here are \[.*'strategy'"),
        ({"search": {"strategy": "grid"}},
         r"search.strategy: unknown search.strategy 'grid'; allowed values are \['evolution', 'nsga2', 'optuna', 'random'\]"),
        ({"evaluation": {"task": "ranking"}},
         r"evaluation.task: unknown evaluation.task 'ranking'; allowed values are \['retrieval', 'verification'\]"),
        ({"search_space": {"name": "vit"}}, r"search_space.name: .*allowed values are " + re.escape(str(list_spaces()))),
        ({"data": {"source": "imagenet"}}, r"data.source: .*allowed values are"),
        ({"training": {"loss_weights": {"triplet": 1}}}, r"training.loss_weights: .*allowed values are"),
        ({"training": {"epochs": 0}}, r"training.epochs: .*greater than 0"),
        ({"gallery": {"backbone": "resnet9000"}}, r"gallery.backbone: .*not a timm model"),
        ({"bogus": 1}, r"bogus: unknown field; allowed fields here are \[.*'data'"),
        ({"search": {"evolution": {"population_size": 2, "sample_size": 5}}}, r"search.evolution: .*sample_size"),
        ({"gallery": {"patience": 3}}, r"gallery.patience=3 .*data.validation_size is 0; set data.validation_size"),
        ({"data": {"validation_size": -1}}, r"data.validation_size: .*greater than or equal to 0"),
        ({"training": {"epochs": 3}, "search": {"final_training": {"epochs": 3}}},
         r"search.final_training.epochs=3 must be more than the 3 epochs a trial trains"),
    ],
)
def test_bad_configs_name_the_field_and_what_is_allowed(tree, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_config(tree)


def test_bad_files_and_overrides_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("search: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["search.num_candidates"])
    with pytest.raises(ConfigError, match="search.num_candidates"):
        load_config(None, ["search.num_candidates=-3"])


@pytest.fixture
def registered_at_runtime():
    """A strategy and an evaluation task that a user registers, unregistered again afterwards."""
    from evaluators.tasks import TASKS, RetrievalTask, register_task
    from orchestrator.strategies import STRATEGIES, Strategy, register_strategy

    @register_strategy
    class ReplayStrategy(Strategy):
        name = "replay"

        def create_searcher(self, request):
            raise NotImplementedError

    @register_task
    class ReidentificationTask(RetrievalTask):
        name = "reidentification"

    yield
    STRATEGIES.unregister("replay")
    TASKS.unregister("reidentification")


def test_strategy_and_task_are_validated_against_their_registries(registered_at_runtime):
    config = validate_config({"search": {"strategy": "replay"}, "evaluation": {"task": "reidentification"}})
    assert (config.search.strategy, config.evaluation.task) == ("replay", "reidentification")
    # The predictor rule asks the strategy's class, not a list of names, before any work is done.
    from orchestrator.strategies.feasibility import check_strategy_settings

    screened = validate_config({"search": {"strategy": "replay", "predictor": {"enabled": True}}})
    with pytest.raises(ConfigError, match=r"search.predictor.enabled works with the strategies "
                                          r"\['evolution', 'random'\].*search.strategy 'replay'"):
        check_strategy_settings(screened.search)


def test_flatten_fields_keeps_the_named_dicts_whole():
    tree = {"training": {"epochs": 3, "loss_weights": {"own_classifier": 1.0}}, "output_dir": "out"}
    assert flatten_fields(tree) == {"training.epochs": 3, "training.loss_weights.own_classifier": 1.0,
                                    "output_dir": "out"}
    assert flatten_fields(tree, keep_whole=("loss_weights",)) == {
        "training.epochs": 3, "training.loss_weights": {"own_classifier": 1.0}, "output_dir": "out"}


def test_loss_parameters_default_to_none_set_and_reach_the_config():
    from orchestrator.config.schema import TrainingConfig

    assert TrainingConfig().loss_parameters == {}
    config = load_config(None, ["training.loss_parameters={cross_contrastive: {temperature: 0.05}}"])
    assert config.training.loss_parameters == {"cross_contrastive": {"temperature": 0.05}}


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"triplet": {"margin": 1.0}},
         r"training.loss_parameters: .*unknown losses \['triplet'\]; allowed values are \[.*'cross_contrastive'"),
        ({"relational": {"temp": 1.0}},
         r"training.loss_parameters.relational.temp: unknown parameter .*allowed parameters are \['temperature'\]"),
        ({"own_classifier": {"temperature": 1.0}},
         r"training.loss_parameters.own_classifier.temperature: .*allowed parameters are \[\]"),
        ({"cross_contrastive": {"temperature": 0}}, r"training.loss_parameters.cross_contrastive.temperature: .*> 0"),
        ({"relational": {"temperature": -1.0}}, r"training.loss_parameters.relational.temperature: .*> 0"),
        ({"relational": {"temperature": float("inf")}}, r"training.loss_parameters"),
        ({"relational": {"temperature": "warm"}}, r"training.loss_parameters.relational.temperature"),
        ({"relational": 0.1}, r"training.loss_parameters.relational"),
    ],
)
def test_bad_loss_parameters_name_the_dotted_field_and_what_is_allowed(parameters, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_config({"training": {"loss_parameters": parameters}})


def test_loss_parameters_are_logged_as_one_param_and_predate_recorded_searches():
    from orchestrator.search.state import FIELDS_OF_EARLIER_SEARCHES, check_resume_config, with_earlier_defaults
    from orchestrator.tracking.client import config_params

    parameters = {"relational": {"temperature": 0.2}}
    assert config_params({"training": {"loss_parameters": parameters}}) == {"training.loss_parameters": parameters}
    assert FIELDS_OF_EARLIER_SEARCHES[("training", "loss_parameters")] == {}
    current = validate_config({}).model_dump(mode="json")
    recorded = {**current, "training": {k: v for k, v in current["training"].items() if k != "loss_parameters"}}
    assert with_earlier_defaults(recorded)["training"]["loss_parameters"] == {}
    assert check_resume_config(recorded, current) == []
    changed = validate_config({"training": {"loss_parameters": parameters}}).model_dump(mode="json")
    with pytest.raises(ConfigError, match="training.loss_parameters"):
        check_resume_config(recorded, changed)


def test_a_config_path_that_is_a_folder_unreadable_or_not_utf8_is_a_config_error(tmp_path):
    import os

    with pytest.raises(ConfigError, match=r"is a folder; give the YAML file"):
        load_config(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("output_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text .* save it as UTF-8 YAML"):
        load_config(latin)
    locked = tmp_path / "locked.yaml"
    locked.write_text("output_dir: x\n")
    locked.chmod(0)
    try:
        if os.geteuid() != 0:  # root reads it anyway
            with pytest.raises(ConfigError, match=r"cannot be read \(permission denied\)"):
                load_config(locked)
    finally:
        locked.chmod(0o600)

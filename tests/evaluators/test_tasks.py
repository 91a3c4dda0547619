"""Evaluation tasks by name: the task registry and its factory."""

import pytest

from evaluators import create_task, list_tasks, register_task, searchable_metrics
from evaluators.tasks import TASKS, RetrievalTask


def test_every_registered_task_names_the_metrics_it_evaluates():
    assert list_tasks() == TASKS.names() == ["retrieval", "verification"]
    for name in list_tasks():
        assert create_task(name).name == name
        assert all(metric.startswith("cross_") for metric in searchable_metrics(name))


def test_an_unknown_task_names_the_field_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"unknown evaluation.task 'ranking'; allowed values are "
                                         r"\['retrieval', 'verification'\]"):
        create_task("ranking")


def test_a_second_task_of_a_registered_name_is_refused():
    class AnotherRetrieval(RetrievalTask):
        pass  # inherits name = "retrieval"

    with pytest.raises(ValueError, match="evaluation task 'retrieval' is registered twice"):
        register_task(AnotherRetrieval)
    assert TASKS["retrieval"] is RetrievalTask

"""A search whose finished candidates all failed the compatibility check ends short (issue 27)."""

from types import SimpleNamespace

from orchestrator.config import load_config
from orchestrator.results.front import recorded_scoring
from orchestrator.search.shortfall import find_shortfall


def test_every_candidate_failing_the_check_is_a_shortfall_and_one_passing_is_not():
    search = load_config(None, ["search.num_candidates=4"]).search
    short = find_shortfall(search, complete=True, trials_started=4, trials_failed=0, candidates_finished=4,
                           compatibility_failed=4)
    assert short is not None and "every one of the 4 finished candidates failed the compatibility check" in str(short)
    assert "gallery.min_steps" in short.fix
    assert find_shortfall(search, complete=True, trials_started=4, trials_failed=0, candidates_finished=4,
                          compatibility_failed=3) is None


def test_a_recorded_search_is_judged_with_its_references_and_an_older_one_as_it_was():
    params = {"search.metric": "cross_r1", "evaluation.compatibility_ratio": "0.5",
              "evaluation.paragon_ratio": "0.5", "evaluation.chance_margin": "0.1"}
    parent = SimpleNamespace(data=SimpleNamespace(params=params, metrics={"paragon_r1": 78.8, "chance_r1": 10.0}))
    scoring = recorded_scoring(parent)
    assert (scoring.paragon, scoring.chance, scoring.paragon_floor) == (78.8, 10.0, 39.4)
    older = SimpleNamespace(data=SimpleNamespace(params={"search.metric": "cross_r1"}, metrics={"paragon_r1": 78.8}))
    assert recorded_scoring(older).paragon_floor is None and recorded_scoring(older).chance_floor is None

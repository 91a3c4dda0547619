"""The compatibility rule a trial's report is judged by (``workers.trial_report.Scoring``): a trial fails when
its final cross-model metric is below ``compatibility_ratio`` times its homogeneous one."""

import math

import pytest

from workers.trial_report import Scoring, homogeneous_metric


def final_result(cross_map: float, homo_map: float, mflops: float = 1.0, **extra) -> dict:
    return {"epoch": 3, "cross_r1": cross_map, "cross_map": cross_map, "homo_r1": homo_map, "homo_map": homo_map,
            "flops": mflops * 1e6, "mflops": mflops, **extra}


# -- the rule ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cross", "homo", "ratio", "verdict"), [
    (40.0, 60.0, 0.5, "passed"),
    (29.9, 60.0, 0.5, "failed"),
    (30.0, 60.0, 0.5, "passed"),   # equality passes: the rule fails only below ratio x homo
    (70.0, 60.0, 0.5, "passed"),   # cross above homo
    (0.0, 60.0, 0.5, "failed"),
    (0.0, 60.0, 0.0, "passed"),    # ratio 0: the check never fails
    (59.0, 60.0, 1.0, "failed"),
])
def test_a_trial_fails_when_its_cross_model_metric_is_below_ratio_times_its_homogeneous_one(cross, homo, ratio,
                                                                                             verdict):
    assert Scoring("cross_map", ratio).verdict(final_result(cross, homo)) == verdict


@pytest.mark.parametrize("result", [
    None,
    {},
    {"epoch": 1, "cross_map": 1.0, "homo_map": 60.0},                        # not final (no cost, stopped early)
    {k: v for k, v in final_result(10.0, 60.0).items() if k != "homo_map"},  # homogeneous metric missing
    {k: v for k, v in final_result(10.0, 60.0).items() if k != "cross_map"},  # cross-model metric missing
    final_result(10.0, 0.0),                                                 # zero homogeneous: nothing to compare
    final_result(10.0, -1.0),
    final_result(math.nan, 60.0),
    final_result(10.0, math.nan),
])
def test_there_is_no_verdict_without_a_final_result_and_a_positive_homogeneous_metric(result):
    assert Scoring("cross_map", 0.5).verdict(result) is None


def test_the_rule_compares_the_searched_metric_with_its_homogeneous_counterpart():
    assert homogeneous_metric("cross_tar_far_1e-2") == "homo_tar_far_1e-2"
    verification = final_result(80.0, 80.0, **{"cross_tar_far_1e-2": 10.0, "homo_tar_far_1e-2": 90.0})
    assert Scoring("cross_map", 0.5).verdict(verification) == "passed"
    assert Scoring("cross_tar_far_1e-2", 0.5).verdict(verification) == "failed"
    with pytest.raises(ValueError, match="cross_"):
        Scoring("homo_map", 0.5).verdict(verification)


# -- against the gallery model and chance (issue 27) --------------------------------------------------
# The search: 10 digit classes, the paragon's R@1 78.8, candidates at cross 10.0-16.5, homo 24-33.
AT_CHANCE = Scoring("cross_r1", 0.5).with_references(paragon=78.8, chance=10.0)


@pytest.mark.parametrize(("cross", "homo", "verdict"), [
    (16.5, 33.0, "failed"),   # passed the homogeneous rule alone (16.5 >= 0.5 x 33): near chance, far below 78.8
    (10.0, 24.0, "failed"),
    (39.3, 45.0, "failed"),   # above chance's floor (19.0), below half the paragon's 78.8 (39.4)
    (39.4, 45.0, "passed"),   # equality passes
    (60.0, 70.0, "passed"),
    (18.9, 0.0, "failed"),    # a homogeneous 0 is judged on the references when they are known
    (45.0, 0.0, "passed"),
])
def test_a_trial_is_judged_against_the_paragon_and_chance_too(cross, homo, verdict):
    assert AT_CHANCE.verdict(final_result(cross, homo)) == verdict
    assert Scoring("cross_r1", 0.5).verdict(final_result(16.5, 33.0)) == "passed"  # the old rule alone


def test_the_chance_floor_applies_where_the_paragon_is_weak_too():
    weak_paragon = Scoring("cross_r1", 0.5).with_references(paragon=30.0, chance=10.0)
    assert weak_paragon.chance_floor == pytest.approx(19.0)  # 10 + 0.1 x (100 - 10)
    assert weak_paragon.verdict(final_result(18.9, 20.0)) == "failed"
    assert weak_paragon.verdict(final_result(19.0, 20.0)) == "passed"
    assert "hardly above chance" in weak_paragon.describe_failure(final_result(18.9, 20.0))
    assert "or cross_r1 < 19.00 (chance 10.00" in weak_paragon.rule


def test_references_switched_off_or_unknown_are_not_applied():
    off = Scoring("cross_r1", 0.5, paragon_ratio=0.0, chance_margin=None).with_references(78.8, 10.0)
    assert off.verdict(final_result(16.5, 33.0)) == "passed" and off.rule == "cross_r1 < 0.5 x homo_r1"
    assert AT_CHANCE.with_references(None, math.nan).verdict(final_result(16.5, 33.0)) == "passed"

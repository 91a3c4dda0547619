from torch import nn

from evaluators import FLOPS_CONVENTION, count_complexity


def test_conv_flops_count_one_multiply_add_as_one_flop():
    model = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    report = count_complexity(model, (3, 10, 10))
    assert report.flops == 3 * 8 * 9 * 10 * 10
    assert report.params == 3 * 8 * 9
    assert "multiply-add" in FLOPS_CONVENTION


def test_ops_fvcore_skips_are_recorded():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Hardswish())
    report = count_complexity(model, (1, 8, 8))
    assert any("hardswish" in op for op in report.skipped_ops)

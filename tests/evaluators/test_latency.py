"""Latency on the deployed graph (evaluators.latency): the ONNX export cmpnas ships, timed in ONNX Runtime."""

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from evaluators.latency import LatencySettings, export_onnx, measure_model_latency, measure_onnx_latency

FAST = LatencySettings(warmup=2, runs=20)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def test_the_export_runs_any_batch_and_matches_the_module_and_leaves_it_alone(tmp_path):
    model = _model().train()
    path = export_onnx(model, (1, 12, 12), tmp_path / "model.onnx")
    assert model.training  # a copy was exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [entry.name for entry in session.get_inputs()] == ["images"]
    images = np.random.default_rng(0).random((5, 1, 12, 12), dtype=np.float32)
    (exported,) = session.run(None, {"images": images})
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(exported, expected, rtol=1e-4, atol=1e-5)


def test_latency_is_a_median_below_its_90th_percentile_and_grows_with_the_model(tmp_path):
    small = measure_model_latency(_model(), (1, 12, 12), FAST)
    large = nn.Sequential(*[nn.Conv2d(1 if i == 0 else 64, 64, 3, padding=1) for i in range(6)],
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    larger = measure_model_latency(large, (1, 48, 48), FAST)
    assert 0 < small.median_ms <= small.p90_ms and small.settings == FAST
    assert larger.median_ms > 5 * small.median_ms  # ~2,000x the multiply-adds


def test_a_file_is_timed_as_it_is(tmp_path):
    path = export_onnx(_model(), (1, 12, 12), tmp_path / "model.onnx")
    assert measure_onnx_latency(path, (1, 12, 12), FAST).median_ms > 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="runs"):
        LatencySettings(runs=0)
    with pytest.raises(ValueError, match="warmup"):
        LatencySettings(warmup=-1)

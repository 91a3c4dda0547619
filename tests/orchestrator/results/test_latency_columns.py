"""The front shows each candidate's latency beside the paragon's, and their ratio next to the FLOPs ratio."""

import csv
import math

from rich.console import Console

from orchestrator.results.front import CandidateRow, ParagonRow, ParetoReport
from orchestrator.results.front_rendering import render_table, write_csv
from workers.trial_report import Scoring


def _report(paragon_latency):
    row = CandidateRow("run1", "arch1", 1.5, 100, 80.0, 75.0, 60.0, 78.0, 0.25, score=60.0, pareto=True,
                       homo_score=62.0, compatibility="passed")
    return ParetoReport([row], ParagonRow(120.0, 11_000_000, 80.0, 70.0, 70.0, latency_ms=paragon_latency),
                        Scoring("cross_map", 0.5))


def test_the_latency_ratio_is_the_paragons_latency_over_the_candidates(tmp_path):
    console = Console(record=True, width=250)
    render_table(_report(5.0), console, only_front=False)
    text = console.export_text()
    assert "latency x" in text and "20.0" in text and "5.00" in text and "ONNX Runtime" in text
    rows = list(csv.DictReader(write_csv(_report(5.0), tmp_path / "front.csv").open()))
    assert float(rows[0]["latency_reduction"]) == 20.0


def test_without_a_paragon_latency_the_ratio_is_not_a_number(tmp_path):
    rows = list(csv.DictReader(write_csv(_report(math.nan), tmp_path / "front.csv").open()))
    assert rows[0]["latency_reduction"] == "nan"

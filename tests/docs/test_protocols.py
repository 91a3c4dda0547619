"""Every pre-registered protocol (bench/protocols/) parses, names itself after its file, has the
sections the evidence runner reads, and has its reasoning in docs/protocol.md."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = sorted((REPO / "bench" / "protocols").glob("*.yaml"))
SECTIONS = ("data", "evaluation", "paragon", "budgets", "schedule", "methods", "seeds", "intervals", "cost",
            "headline", "targets")


def test_there_is_a_protocol():
    assert PROTOCOLS


@pytest.mark.parametrize("path", PROTOCOLS, ids=lambda path: path.stem)
def test_a_protocol_parses_and_has_its_sections_and_reasoning(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["protocol"] == path.stem
    missing = [section for section in SECTIONS if section not in spec]
    assert not missing, f"{path.name} lacks {missing}"
    assert len(spec["seeds"]) >= 3, "never fewer than 3 independent seeds"
    assert "random" in spec["methods"], "never without the random baseline"
    assert f"## {path.stem}" in (REPO / "docs" / "protocol.md").read_text()

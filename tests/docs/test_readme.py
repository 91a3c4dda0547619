"""The README is a quickstart a newcomer reads in minutes; the embedded default points at the page
that documents every field."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_is_a_quickstart_of_at_most_120_lines_with_its_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 120
    assert "make demo" in text and "make test" in text


def test_the_embedded_defaults_header_names_a_page_that_documents_every_field():
    header = (ROOT / "orchestrator" / "config" / "quickstart.yaml").read_text().splitlines()[:3]
    (page,) = re.findall(r"documented in (\S+?);", " ".join(header))
    documented = (ROOT / page).read_text()
    assert "`search.optuna.sampler`" in documented and "`data.validation_size`" in documented
    assert (ROOT / "configs" / "quickstart.yaml").read_text() == (ROOT / "orchestrator" / "config" / "quickstart.yaml").read_text()



def test_every_row_of_the_readmes_cost_table_gives_a_measured_time():
    text = (ROOT / "README.md").read_text()
    rows = [line.split("|") for line in text.splitlines() if line.startswith(("| install", "| `make "))]
    assert {row[1].strip() for row in rows} >= {"`make demo`", "`make test`"}
    for row in rows:
        assert re.search(r"\d+(\.\d+)? min", row[2]), f"{row[1].strip()}: give the measured time, not {row[2]!r}"



@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_install_leaves_byte_compilation_to_first_use_unless_python_never_keeps_it(tmp_path):
    """pip byte-compiles every module it installs unless told not to: 45% of the install's CPU work
    (docs/benchmarks.md, "The first ten minutes"); Python compiles what a run imports, once. Where
    PYTHONDONTWRITEBYTECODE is set nothing would be kept, so pip compiles as before."""

    def install_recipe(**extra_env: str) -> list[str]:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        shown = subprocess.run(["make", "-n", "-B", "install", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, check=True,
                               env={**env, **extra_env}, capture_output=True, text=True).stdout
        return [line for line in shown.splitlines() if "pip install" in line]

    assert [line for line in install_recipe() if "--no-compile" in line]
    assert install_recipe(PYTHONDONTWRITEBYTECODE="1") and not [
        line for line in install_recipe(PYTHONDONTWRITEBYTECODE="1") if "--no-compile" in line]

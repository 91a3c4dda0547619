"""The wheel installs anywhere: built from the checkout, installed (not editable) into a fresh virtual
environment, and run from a folder outside the checkout, it finds the embedded default configuration
(package data, read through importlib.resources) and searches with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import LOCAL_RAY

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _source_copy(target: Path) -> Path:
    """The files git tracks, copied: the build leaves nothing in the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / name)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding the cmpnas wheel only; its dependencies are the test environment's (a .pth
    file adds that site-packages, whose own .pth files, the editable install among them, are not run)."""
    work = tmp_path_factory.mktemp("wheel")
    source = _source_copy(work / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(work / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("cmpnas-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "cmpnas_test_dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    return venv


def _run(venv: Path, folder: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=folder, capture_output=True, text=True,
                          timeout=timeout, env={**environment, "COLUMNS": "200", **LOCAL_RAY})


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    located = _run(installed, tmp_path, "python", "-c",
                   "import orchestrator, importlib.metadata as m; print(orchestrator.__file__); print(m.version('cmpnas'))")
    path, version = located.stdout.split()
    assert Path(path).is_relative_to(installed) and not Path(path).is_relative_to(ROOT), path
    assert version == "0.2.0"
    shipped = _run(installed, tmp_path, "python", "-c",
                   "from orchestrator.config import DEFAULT_CONFIG; print(DEFAULT_CONFIG)").stdout.strip()
    assert Path(shipped).is_relative_to(installed) and Path(shipped).is_file()


def test_space_info_runs_from_an_unrelated_folder_on_the_embedded_default(installed, tmp_path):
    result = _run(installed, tmp_path, "cmpnas", "space", "info")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mnv3_28" in result.stdout and "3" in result.stdout


def test_a_search_runs_from_an_unrelated_folder_on_the_embedded_default(installed, tmp_path, gallery_dir):
    # The quickstart's own settings, smaller: the session's tiny gallery, one short candidate.
    overrides = ["data.train_size=1500", "data.validation_size=0", "data.query_size=100", "data.gallery_size=400",
                 f"gallery.checkpoint={gallery_dir / 'gallery.safetensors'}", "training.epochs=1",
                 "training.min_steps=0", "search.num_candidates=1", "search.max_concurrent=1",
                 "resources.measure_latency=false", "ray.num_cpus=2",
                 # One epoch of a few steps leaves the candidate near chance: judged by the homogeneous ratio
                 # alone, as the tests' tiny searches are (tests/conftest.py), so the search does not end short.
                 "evaluation.paragon_ratio=0", "evaluation.chance_margin=null"]
    result = _run(installed, tmp_path, "cmpnas", "search", *[item for override in overrides for item in ("--set", override)])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Pareto front" in result.stdout and "latency x" in result.stdout
    assert (tmp_path / "outputs" / "quickstart" / "pareto.csv").is_file(), "the quickstart's output_dir, relative to the cwd"

"""What travels to the lent GPU machine (bench/gpu/, docs/deploy.md "The lent GPU machine"), offline.

The carry itself is built with downloads (`make gpu-carry`) and checked there by its resolution
check; these tests check, without a network, the pieces that check relies on: both constraints
profiles satisfy pyproject.toml, a repacked wheel still installs, and the parts keep co-installed
wheels together under the per-call limit.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

from carry_wheels import group_by_top_level, pack_parts, repack_without, stub_wheel  # noqa: E402


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(name): version for name, _, version in (line.partition("==") for line in lines if line)}


@pytest.mark.parametrize("profile", ["constraints.txt", "constraints-gpu.txt"])
def test_each_constraints_profile_satisfies_pyproject(profile):
    """The GPU image's torch 2.11, timm 1.0.29 and numpy 2.5.2 are within cmpnas's own bounds."""
    pinned = pins(ROOT / profile)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["cpu"]]
    outside = [f"{r.name}=={pinned[canonicalize_name(r.name)]} (pyproject: {r.specifier})" for r in requirements
               if canonicalize_name(r.name) in pinned and not r.specifier.contains(pinned[canonicalize_name(r.name)],
                                                                                   prereleases=True)]
    assert not outside, f"{profile}: {outside}"
    assert all(canonicalize_name(r.name) in pinned for r in requirements), f"{profile} misses a dependency"


def test_the_gpu_profile_pins_the_images_torch_and_no_cuda_wheels():
    pinned = pins(ROOT / "constraints-gpu.txt")
    assert (pinned["torch"], pinned["timm"]) == ("2.11.0", "1.0.29")
    assert not [name for name in pinned if name.startswith(("nvidia-", "cuda-"))]


def _wheel(folder: Path, files: dict[str, bytes]) -> Path:
    """A real wheel of package ``demo``: ``files`` plus its dist-info, every file in RECORD with its hash."""
    info = "demo-1.0.dist-info"
    files = {**files, f"{info}/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    digest = lambda data: base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()  # noqa: E731
    record = "".join(f"{name},sha256={digest(data)},{len(data)}\n" for name, data in files.items())
    path = folder / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in {**files, f"{info}/RECORD": (record + f"{info}/RECORD,,\n").encode()}.items():
            wheel.writestr(name, data)
    return path


def test_a_repacked_wheel_drops_the_folder_and_its_record_lines_and_installs(tmp_path):
    source = _wheel(tmp_path, {"demo/__init__.py": b"X = 1\n", "demo/jars/big.jar": b"\0" * 4096})
    (tmp_path / "out").mkdir()
    repacked = tmp_path / "out" / source.name
    assert repack_without(source, repacked, "demo/jars/") == ["demo/jars/big.jar"]
    with zipfile.ZipFile(repacked) as wheel:
        record = wheel.read("demo-1.0.dist-info/RECORD").decode()
        assert "demo/jars" not in record and "demo/jars/big.jar" not in wheel.namelist()
        assert "demo/__init__.py" in record
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--target", str(tmp_path / "site"), str(repacked)], check=True)
    assert (tmp_path / "site/demo/__init__.py").exists() and not (tmp_path / "site/demo/jars").exists()
    with pytest.raises(SystemExit, match="nothing under"):
        repack_without(source, tmp_path / "again.whl", "demo/absent/")


def test_wheels_of_one_top_level_folder_stay_in_one_part_and_parts_stay_under_the_limit(tmp_path):
    def wheel(name: str, top: str, size: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        path = folder / f"{name}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(f"{top}/__init__.py", b"")
            archive.writestr(f"{top}/blob.bin", bytes(size))  # stored: the file is as large as its data
            archive.writestr(f"{name}-1.0.dist-info/METADATA", b"")
        return path

    mlflow = [wheel("mlflow", "mlflow", 30_000), wheel("mlflow_skinny", "mlflow", 10_000)]
    others = [wheel("ray", "ray", 45_000), wheel("faiss", "faiss", 20_000), wheel("optuna", "optuna", 2_000)]
    groups = group_by_top_level(mlflow + others)
    assert sorted(mlflow) in groups and len(groups) == 4
    parts = pack_parts(groups, limit=62_000)
    assert len(parts) == 2
    assert all(sum(f.stat().st_size for f in part) <= 62_000 for part in parts)
    assert any(set(mlflow) <= set(part) for part in parts)
    with pytest.raises(SystemExit, match="over one part"):
        pack_parts(groups, limit=40_000)


def test_a_placeholder_wheel_installs_nothing_but_its_metadata(tmp_path):
    stub = stub_wheel(tmp_path, "torch", "2.11.0+image")
    assert stub.name == "torch-2.11.0+image-py3-none-any.whl"
    with zipfile.ZipFile(stub) as wheel:
        assert all(".dist-info/" in name for name in wheel.namelist())
        assert "Requires-Dist" not in wheel.read("torch-2.11.0+image.dist-info/METADATA").decode()

"""Builds, here, what travels to the lent GPU machine: the wheels cmpnas needs that its image lacks.

The GPU image (bench/gpu/image-packages.txt) has torch, timm, onnx, numpy, pandas, ... but no Ray,
MLflow, Optuna, pydantic, FAISS, fvcore, SQLAlchemy; nothing can be downloaded there, and one call
carries at most 64 MiB with the working tree. So this script, run on a machine that reaches PyPI:

1. builds the cmpnas wheel from the checkout and resolves ``cmpnas[cpu]`` for CPython 3.12 on Linux
   x86_64 under constraints-gpu.txt, every image package stood in by a placeholder wheel (stubs/);
2. downloads the resolved wheels the image lacks (carry/download/);
3. repacks the Ray wheel without ``ray/jars`` (Java workers only, 32 MB), RECORD rewritten, and
   checks that it imports and runs a task on a local cluster with token auth, in a Python 3.12 venv;
4. splits the wheels, and the Fashion-MNIST files (the image has no data set), into parts of at most
   ``--part-mib`` each (carry/part1, ...): a part is one call's ``carry``. Wheels that install into
   one top-level folder (mlflow, mlflow-skinny, mlflow-tracing) stay in one part, as each part is
   installed by one pip run into its own folder there. Each part has a SHA256SUMS; MANIFEST.json
   and MANIFEST.txt list every file with its size and sha256;
5. runs the resolution check: an offline ``pip install --dry-run --no-index`` of ``cmpnas[cpu]`` from
   the parts and the placeholders alone, which fails if anything is missing or doubled.

    python bench/gpu/build_carry.py              # all steps (downloads kept: a rerun reuses them)
    python bench/gpu/build_carry.py --check      # step 5 only, on the parts already built
    python bench/gpu/build_carry.py --no-ray-check

Everything lands in bench/gpu/carry/, which git ignores. docs/deploy.md ("GPU machine") says how the
parts travel and bench/gpu/run_gpu.sh installs them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from carry_wheels import (  # noqa: E402  (the script's own helpers, beside it)
    canonical, group_by_top_level, normalized_version, pack_parts, repack_without, sha256, stub_wheel, wheel_name_version)

CARRY = HERE / "carry"
DOWNLOAD, STUBS, ORIGINALS = CARRY / "download", CARRY / "stubs", CARRY / "originals"
CONSTRAINTS = ROOT / "constraints-gpu.txt"
IMAGE_PACKAGES = HERE / "image-packages.txt"
DATA = Path("/usr/share/datasets/fashion-mnist")
DATA_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz")
REQUIREMENT = "cmpnas[cpu]"
# pip matches a manylinux tag exactly: every glibc the image's Ubuntu 24.04 (2.39) runs.
PLATFORMS = ["manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in range(39, 4, -1)]
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--only-binary", ":all:",
          *[arg for platform in PLATFORMS for arg in ("--platform", platform)]]
DROPPED_FROM_RAY = "ray/jars/"
# Published as source only (pure Python): built into wheels here, at constraints-gpu.txt's pin.
BUILT_HERE = ("fvcore", "iopath")


def python312() -> str:
    """A CPython 3.12 here: pip evaluates dependency markers with the Python it runs on."""
    for candidate in (os.environ.get("PYTHON312"), shutil.which("python3.12"),
                      str(Path.home() / ".pyenv/versions/3.12.1/bin/python3.12")):
        if candidate and Path(candidate).exists() and subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                stderr=subprocess.DEVNULL).returncode == 0:
            return candidate
    print("no Python 3.12 here: resolving with", sys.executable, "(markers read for its version)")
    return sys.executable


PIP_CHATTER = ("Processing", "Collecting", "Obtaining", "Downloading", "Using cached", "Looking in", "━", "INFO:")


def pip(python: str, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    """pip with no configuration of this machine (its global constraints, find-links, local indexes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    command = [python, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(command, env=env, text=True, capture_output=capture)
    if result.returncode != 0:
        said = [line for line in f"{result.stdout or ''}{result.stderr or ''}".splitlines()
                if not line.lstrip().startswith(PIP_CHATTER)]
        raise SystemExit(f"failed: {' '.join(command[:6])} ...\n" + "\n".join(said))
    return result


def image_packages() -> list[str]:
    lines = IMAGE_PACKAGES.read_text().splitlines()
    return [canonical(line.strip()) for line in lines if line.strip() and not line.startswith("#")]


def pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {canonical(name): version for name, _, version in (line.partition("==") for line in lines if line)}


def write_stubs() -> dict[str, str]:
    """Placeholder wheels of the image's packages, at constraints-gpu.txt's pin (version +image)."""
    shutil.rmtree(STUBS, ignore_errors=True)
    STUBS.mkdir(parents=True)
    pinned, written = pins(CONSTRAINTS), {}
    for name in image_packages():
        if name in pinned:
            stub_wheel(STUBS, name, pinned[name] + "+image")
            written[name] = pinned[name]
    return written


def build_cmpnas_wheel() -> Path:
    for old in DOWNLOAD.glob("cmpnas-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as work:
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        for name in filter(None, tracked.decode().split("\0")):
            source = ROOT / name
            if source.is_file():
                (Path(work) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, Path(work) / name, follow_symlinks=False)
        pip(sys.executable, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(DOWNLOAD), work)
    (wheel,) = DOWNLOAD.glob("cmpnas-*.whl")
    return wheel


def build_source_only(python: str) -> None:
    pinned = pins(CONSTRAINTS)
    for name in BUILT_HERE:
        if not any(wheel_name_version(w) == (name, normalized_version(pinned[name])) for w in DOWNLOAD.glob("*.whl")):
            pip(python, "wheel", "--quiet", "--no-deps", "-w", str(DOWNLOAD), f"{name}=={pinned[name]}")
    impure = [w.name for w in DOWNLOAD.glob("*.whl") if w.name.split("-")[0] in BUILT_HERE and
              not w.name.endswith("-py3-none-any.whl")]
    if impure:
        raise SystemExit(f"built here but not pure Python, so not for the GPU machine: {impure}")


def resolve(python: str, links: list[Path], offline: bool) -> list[dict]:
    """What pip would install for cmpnas[cpu] on the GPU image (dry run, placeholders for the image)."""
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "report.json"
        index = ["--no-index"] if offline else []
        pip(python, "install", "--dry-run", "--ignore-installed", *index, *TARGET,
            "--target", str(Path(work) / "site"), "-c", str(CONSTRAINTS),
            *[arg for link in links for arg in ("--find-links", str(link))], "--report", str(report), REQUIREMENT,
            capture=True)
        return json.loads(report.read_text())["install"]


def carried_requirements(resolved: list[dict], image: set[str]) -> list[str]:
    wanted = []
    for item in resolved:
        name, version = canonical(item["metadata"]["name"]), item["metadata"]["version"]
        if name not in image and name != "cmpnas":
            wanted.append(f"{name}=={version}")
    return sorted(wanted)


def download(python: str, requirements: list[str]) -> list[Path]:
    """The wheels of ``requirements``, downloaded once (kept in carry/download across runs)."""
    have = {wheel_name_version(w): w for w in DOWNLOAD.glob("*.whl")}
    have.update({key: DOWNLOAD / w.name for key, w in ((wheel_name_version(w), w) for w in ORIGINALS.glob("*.whl"))})
    missing = [r for r in requirements if tuple(r.split("==")) not in have]
    if missing:
        pip(python, "download", "--no-deps", "--quiet", *TARGET, "-d", str(DOWNLOAD), *missing)
    wanted = {tuple(r.split("==")) for r in requirements}
    for wheel in DOWNLOAD.glob("*.whl"):  # a pin changed: the old wheel would travel beside the new
        if wheel_name_version(wheel) not in wanted and not wheel.name.startswith("cmpnas-"):
            wheel.unlink()
    return sorted(DOWNLOAD.glob("*.whl"))


def repack_ray() -> Path:
    """carry/download's Ray wheel without ray/jars; the original is kept in carry/originals."""
    (wheel,) = [w for w in DOWNLOAD.glob("ray-*.whl")]
    original = ORIGINALS / wheel.name
    ORIGINALS.mkdir(parents=True, exist_ok=True)
    if not original.exists():
        shutil.move(wheel, original)
    dropped = repack_without(original, wheel, DROPPED_FROM_RAY)
    print(f"ray: {original.stat().st_size / 2**20:.1f} MiB -> {wheel.stat().st_size / 2**20:.1f} MiB "
          f"without {DROPPED_FROM_RAY} ({len(dropped)} files)")
    return wheel


RAY_CHECK = """
import os, ray
assert os.environ["RAY_AUTH_MODE"] == "token"  # read when ray is imported: set by the caller
ray.init(num_cpus=1, include_dashboard=False)
@ray.remote
def square(x):
    return x * x
assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
print("repacked ray", ray.__version__, "ran 4 tasks on a local cluster with token auth")
ray.shutdown()
"""


def check_ray(python: str, ray_wheel: Path) -> None:
    """The repacked wheel installs (pip checks its RECORD), imports and runs tasks, in a fresh venv."""
    venv = CARRY / "ray-check-venv"
    if not (venv / "bin/python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    venv_python = str(venv / "bin/python")
    pip(venv_python, "install", "--quiet", "--force-reinstall", "--no-deps", str(ray_wheel))
    pip(venv_python, "install", "--quiet", "--find-links", str(DOWNLOAD), "-c", str(CONSTRAINTS), str(ray_wheel))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    subprocess.run([venv_python, "-c", RAY_CHECK], check=True, env=env, timeout=300)


def data_items() -> list[Path]:
    return [DATA / name for name in DATA_FILES]


def split(wheels: list[Path], part_mib: float) -> list[list[Path]]:
    """Parts of at most part_mib, co-installed wheels together; each part gets SHA256SUMS."""
    for old in CARRY.glob("part*"):
        shutil.rmtree(old)
    groups = group_by_top_level(wheels) + [data_items()]
    parts = pack_parts(groups, int(part_mib * 2**20))
    for number, files in enumerate(parts, 1):
        folder = CARRY / f"part{number}"
        folder.mkdir()
        lines = []
        for file in files:
            subfolder = folder / ("fashion-mnist" if file.parent == DATA else "")
            subfolder.mkdir(exist_ok=True)
            try:
                os.link(file, subfolder / file.name)
            except OSError:  # another file system (the data set)
                shutil.copy2(file, subfolder / file.name)
            lines.append(f"{sha256(file)}  {(subfolder / file.name).relative_to(folder)}")
        (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
        (folder / "PART").write_text(f"{number}/{len(parts)}\n")  # run_gpu.sh: which parts a run needs
    return parts


def write_manifest(parts: list[list[Path]], stubs: dict[str, str]) -> None:
    manifest = {"requirement": REQUIREMENT, "constraints": CONSTRAINTS.name, "python": "3.12", "parts": [],
                "from_image": stubs, "dropped_from_ray": DROPPED_FROM_RAY}
    text = [f"# The carry to the GPU machine ({REQUIREMENT}, CPython 3.12, Linux x86_64); see docs/deploy.md", ""]
    for number, files in enumerate(parts, 1):
        entries = [{"file": f.name, "bytes": f.stat().st_size, "sha256": sha256(f)} for f in files]
        total = sum(entry["bytes"] for entry in entries)
        manifest["parts"].append({"part": f"part{number}", "bytes": total, "files": entries})
        text.append(f"part{number}: {total / 2**20:.1f} MiB, {len(entries)} files")
        text += [f"  {e['bytes'] / 2**20:8.2f} MiB  {e['sha256'][:16]}  {e['file']}" for e in entries]
    grand = sum(part["bytes"] for part in manifest["parts"])
    manifest["bytes"] = grand
    text.insert(1, f"# total {grand / 2**20:.1f} MiB in {len(parts)} parts")
    (CARRY / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (CARRY / "MANIFEST.txt").write_text("\n".join(text) + "\n")
    print("\n".join(line for line in text if not line.startswith("  ")))


def check(python: str) -> None:
    """Offline: cmpnas[cpu] resolves from the parts and the image's placeholders alone, nothing doubled."""
    parts = sorted(CARRY.glob("part*"))
    if not parts:
        raise SystemExit("no parts: run bench/gpu/build_carry.py first")
    stubs = write_stubs()
    resolved = resolve(python, [*parts, STUBS], offline=True)
    carried = {wheel_name_version(w)[0] for part in parts for w in part.glob("*.whl")}
    image = set(image_packages())
    doubled = sorted(carried & image)
    used = {canonical(item["metadata"]["name"]) for item in resolved}
    from_image = sorted(used & image)
    unused = sorted(carried - used)
    print(f"resolution check: {REQUIREMENT} resolves offline from {len(parts)} parts and the image: "
          f"{len(used)} distributions, {len(used - image)} carried, {len(from_image)} from the image "
          f"({', '.join(from_image)})")
    problems = [f"carried and on the image (two copies there): {doubled}"] * bool(doubled) + [
        f"carried but not needed: {unused}"] * bool(unused) + [
        f"on the image without a pinned version in {CONSTRAINTS.name}: {sorted(used & image - set(stubs))}"] * bool(
        used & image - set(stubs))
    if problems:
        raise SystemExit("resolution check failed: " + "; ".join(problems))
    print("resolution check passed")


def build(args: argparse.Namespace) -> None:
    python = python312()
    DOWNLOAD.mkdir(parents=True, exist_ok=True)
    stubs = write_stubs()
    cmpnas = build_cmpnas_wheel()
    build_source_only(python)
    resolved = resolve(python, [DOWNLOAD, STUBS], offline=False)
    requirements = carried_requirements(resolved, set(image_packages()))
    print(f"{len(resolved)} distributions for {REQUIREMENT}: {len(requirements)} to carry, "
          f"{len(resolved) - len(requirements) - 1} on the image")
    wheels = download(python, requirements)
    ray = repack_ray()
    if args.ray_check:
        check_ray(python, ray)
    assert cmpnas in wheels
    write_manifest(split(wheels, args.part_mib), stubs)
    check(python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only the offline resolution check of the parts")
    parser.add_argument("--no-ray-check", dest="ray_check", action="store_false",
                        help="skip the import and local-cluster check of the repacked Ray wheel")
    parser.add_argument("--part-mib", type=float, default=58.0,
                        help="largest part; a call carries 64 MiB with the working tree (about 3 MiB)")
    args = parser.parse_args()
    check(python312()) if args.check else build(args)


if __name__ == "__main__":
    main()

"""Wheel files for bench/gpu/build_carry.py: names, placeholder wheels, repacking, and parts.

A wheel is a zip whose RECORD lists every file with its sha256; pip refuses one whose RECORD names
a file the zip lacks, so a repacked wheel drops those lines too. Placeholder wheels hold metadata
only (no files, no dependencies): they stand in for what the GPU image already has.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path


def canonical(name: str) -> str:
    """PEP 503's normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def normalized_version(version: str) -> str:
    try:
        from packaging.version import Version
    except ImportError:  # a bare Python: versions as written (pip's report and PyPI's file names agree)
        return version
    return str(Version(version))


def wheel_name_version(wheel: Path) -> tuple[str, str]:
    name, version = wheel.name.split("-")[:2]
    return canonical(name), normalized_version(version)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def stub_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel of ``name`` ``version`` with metadata only: pip resolves it, and it installs nothing."""
    stem = f"{re.sub(r'[-.]+', '_', name)}-{version}"
    files = {f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{stem}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: cmpnas-stub\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n"}
    record = "".join(f"{path},{_record_hash(text.encode())},{len(text.encode())}\n" for path, text in files.items())
    files[f"{stem}.dist-info/RECORD"] = record + f"{stem}.dist-info/RECORD,,\n"
    path = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


def repack_without(source: Path, target: Path, prefix: str) -> list[str]:
    """``source`` copied to ``target`` without the files under ``prefix``, and without their RECORD lines."""
    dropped = []
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as repacked:
        for info in original.infolist():
            if info.filename.startswith(prefix):
                dropped.append(info.filename)
                continue
            data = original.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith(prefix)).encode()
            repacked.writestr(info, data, compress_type=info.compress_type)
    if not dropped:
        raise SystemExit(f"{source.name} has nothing under {prefix}: repacking changed nothing")
    return dropped


def top_level(wheel: Path) -> set[str]:
    """The folders and modules a wheel installs at the top of site-packages (scripts aside)."""
    names = set()
    for member in zipfile.ZipFile(wheel).namelist():
        parts = member.split("/")
        if parts[0].endswith(".data") and len(parts) > 2 and parts[1] in ("purelib", "platlib"):
            parts = parts[2:]
        if not parts[0].endswith((".dist-info", ".data")):
            names.add(parts[0])
    return names


def group_by_top_level(wheels: list[Path]) -> list[list[Path]]:
    """Wheels that share a top-level folder (mlflow's three, namespace packages) in one group: one pip
    run must install them together into one folder, or the first folder on sys.path hides the rest."""
    groups: list[tuple[set[str], list[Path]]] = []
    for wheel in wheels:
        names, members = top_level(wheel), [wheel]
        for group in [g for g in groups if g[0] & names]:
            groups.remove(group)
            names, members = names | group[0], members + group[1]
        groups.append((names, members))
    return [sorted(members) for _, members in groups]


def pack_parts(groups: list[list[Path]], limit: int) -> list[list[Path]]:
    """Groups spread over as few parts of at most ``limit`` bytes as possible, as evenly as the groups
    allow (largest group first, each into the emptiest part): every call then carries about as much,
    with the most room left under its limit. The largest part comes first."""
    sized = sorted(((sum(f.stat().st_size for f in group), group) for group in groups), key=lambda g: -g[0])
    if sized and sized[0][0] > limit:
        raise SystemExit(f"{[f.name for f in sized[0][1]]} take {sized[0][0] / 2**20:.1f} MiB, over one part's "
                         f"{limit / 2**20:.1f} MiB")
    count = -(-sum(size for size, _ in sized) // limit)
    while True:
        parts: list[tuple[int, list[Path]]] = [(0, []) for _ in range(count)]
        for size, group in sized:
            emptiest = min(range(count), key=lambda index: parts[index][0])
            parts[emptiest] = (parts[emptiest][0] + size, parts[emptiest][1] + group)
        if all(used <= limit for used, _ in parts):
            return [sorted(files) for _, files in sorted(parts, key=lambda part: -part[0])]
        count += 1

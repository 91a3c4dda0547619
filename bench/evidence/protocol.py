"""A pre-registered protocol (``bench/protocols/*.yaml``, reasoning in ``docs/protocol.md``) and the
work folder of its runs.

Rules:
* a protocol runs only from a committed, unmodified file: every result records the commit and the
  SHA-256 of the file it followed, so a reader can check that the protocol is older than its results;
* a work folder belongs to one protocol: the first run records the protocol's name and digest in
  ``<workdir>/<protocol>/protocol.json``, and a later run with a different file (an edited protocol,
  or another one) is refused instead of mixing rows of two plans.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


class ProtocolError(RuntimeError):
    pass


@dataclass(frozen=True)
class Protocol:
    name: str
    path: Path
    digest: str  # SHA-256 of the file
    commit: str  # the last commit that changed the file
    spec: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        return self.spec[name]

    def identity(self) -> dict[str, str]:
        return {"protocol": self.name, "protocol_sha256": self.digest, "protocol_commit": self.commit,
                "protocol_file": str(self.path.relative_to(REPO))}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def load_protocol(path: str | Path) -> Protocol:
    """The protocol in ``path``, refused when the file is not committed as it is."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ProtocolError(f"no protocol file {path}; the protocols are in bench/protocols/")
    relative = str(path.relative_to(REPO))
    if _git("status", "--porcelain", "--", relative):
        raise ProtocolError(f"{relative} has uncommitted changes: a protocol runs only as committed (a changed "
                            "plan is a new protocol file, committed before its results)")
    commit = _git("log", "-1", "--format=%H", "--", relative)
    if not commit:
        raise ProtocolError(f"{relative} is not committed: commit the protocol before running it")
    text = path.read_text()
    spec = yaml.safe_load(text)
    if not isinstance(spec, dict) or "protocol" not in spec:
        raise ProtocolError(f"{relative} is not a protocol: it needs a top-level 'protocol' name")
    return Protocol(spec["protocol"], path, hashlib.sha256(text.encode()).hexdigest(), commit, spec)


def protocol_workdir(root: str | Path, protocol: Protocol) -> Path:
    """``root/<protocol>``, claimed for ``protocol`` on first use and refused to any other file."""
    folder = Path(root).expanduser() / protocol.name
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "protocol.json"
    if record.exists():
        recorded = json.loads(record.read_text())
        if recorded.get("protocol_sha256") != protocol.digest:
            raise ProtocolError(f"{folder} holds runs of {recorded.get('protocol')} at "
                                f"{str(recorded.get('protocol_commit'))[:12]} (sha256 "
                                f"{str(recorded.get('protocol_sha256'))[:12]}), not of this file: rows of two "
                                "protocols are never mixed; use another --workdir")
    else:
        record.write_text(json.dumps(protocol.identity(), indent=2) + "\n")
    return folder


def code_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return _git("rev-parse", "HEAD") + ("+dirty" if dirty else "")

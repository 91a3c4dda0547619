"""What ``cmpnas serve`` is asked to run: the model, the index, the HTTP address and the replicas.

Rules: every value is checked when the options are made (``ServeOptionsError`` names the command
option, the allowed values and the fix), so a bad value is refused before Ray or Serve starts. The
request limits derive from the body limit: one image can never be larger than the body that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.serving.query import DEFAULT_K
from orchestrator.serving.request_images import RequestLimits
from search_space.errors import CmpnasError

APP_NAME = "cmpnas"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_MB = 32.0


class ServeOptionsError(CmpnasError, ValueError):
    """A ``cmpnas serve`` option out of its range."""


@dataclass(frozen=True)
class ServeOptions:
    """``cmpnas serve``'s options. ``address`` None starts a local Ray; else the Ray cluster to join.
    ``nprobe`` / ``ef_search``: the gallery index's search knobs (None: the gallery's recorded ones),
    checked against the index when a replica opens it."""

    model: Path
    index: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.01
    k_default: int = DEFAULT_K
    max_k: int = RequestLimits.max_k
    max_images: int = RequestLimits.max_images
    max_body_mb: float = DEFAULT_MAX_BODY_MB
    force: bool = False
    nprobe: int | None = None
    ef_search: int | None = None
    address: str | None = None
    app_name: str = APP_NAME
    # --model models:/NAME@ALIAS: ``model`` is the driver's download; a replica on another node downloads
    # its own copy from ``tracking_uri`` (orchestrator.serving.registry_reference).
    model_reference: str | None = None
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        _check("--port", self.port, 1, 65535)
        _check("--replicas", self.replicas, 1, 1024)
        _check("--num-cpus", self.num_cpus, 0, 1024)
        _check("--num-gpus", self.num_gpus, 0, 64)
        _check("--max-batch-size", self.max_batch_size, 1, 4096)
        _check("--batch-wait-timeout-s", self.batch_wait_timeout_s, 0, 10)
        _check("--max-k", self.max_k, 1, 100_000)
        _check("--k-default", self.k_default, 1, self.max_k)
        _check("--max-images", self.max_images, 1, 4096)
        _check("--max-body-mb", self.max_body_mb, 0.001, 4096)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def limits(self) -> RequestLimits:
        """What one request may hold; an image at most the body limit."""
        return RequestLimits(max_image_bytes=min(RequestLimits.max_image_bytes, self.max_body_bytes),
                             max_images=self.max_images, max_k=self.max_k)

    @property
    def max_ongoing_requests(self) -> int:
        """Requests a replica takes at once: two batches' worth, so one batch fills while the other runs."""
        return max(2 * self.max_batch_size, 4)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _check(option: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ServeOptionsError(f"{option}={value} is out of range: give a value from {low} to {high}")

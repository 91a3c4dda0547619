"""The Ray connection of a job (search or supernet training) and the check that its tasks fit.

Rules:
* with ``ray.address`` (and ``RAY_ADDRESS``) unset the job starts a local Ray (``ray.num_cpus``
  CPUs), even when a cluster started by ``ray start`` runs on the machine, and shuts it down at
  the end; with an address it joins that cluster (checked first by
  ``orchestrator.setup.ray_join``: reachable, and accepting this driver's token), ships cmpnas's own packages in the
  runtime environment (``ray.ship_code``) and leaves the cluster running;
* a task that asks for more CPUs or GPUs than the largest live node has would wait forever: on a
  local Ray that is refused (``ResourceRequestError``, naming the field to lower); on a joined
  cluster, which may autoscale, it is only a warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import ray

from orchestrator.config.schema import RayConfig
from orchestrator.setup.ray_join import check_can_join
from search_space.errors import CmpnasError

logger = logging.getLogger(__name__)


# ray.init's address for a new local Ray, never joining one.
LOCAL = "local"


class ResourceRequestError(CmpnasError, RuntimeError):
    """A task asks for more than any node of the Ray cluster has: it would wait forever."""


@dataclass(frozen=True)
class ResourceRequest:
    """What one task of the job asks for, and the config fields it comes from."""

    task: str  # what would never start, e.g. "trials"
    cpus: float
    gpus: float
    cpus_field: str
    gpus_field: str


def connect_ray(settings: RayConfig, requests: Sequence[ResourceRequest]) -> bool:
    """Start a local Ray (or join ``settings.address``) and check each request fits on some node.

    Returns whether this call started Ray, i.e. whether the caller must shut it down.
    """
    started = not ray.is_initialized()
    address = ray_address(settings)
    joining = address != LOCAL
    if started:
        if joining:
            check_can_join(address)  # seconds, where ray.init would retry for half a minute
        ray.init(address=address, num_cpus=None if joining else settings.num_cpus,
                 runtime_env=code_runtime_env() if joining and settings.ship_code else None,
                 include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        for request in requests:
            check_fits(request, strict=not joining)
    except ResourceRequestError:
        if started:
            ray.shutdown()
        raise
    return started


def ray_address(settings: RayConfig) -> str:
    """``ray.address``, else Ray's ``RAY_ADDRESS`` (set for a job submitted to a cluster), else a Ray
    of the job's own. Never Ray's default of joining whatever cluster ``ray start`` last recorded on
    this machine (``/tmp/ray/ray_current_cluster``): a search without an address is local. A joined
    cluster gets cmpnas's packages as ``py_modules`` (``ray.ship_code``); a job submitted with its
    own ``py_modules`` in its runtime environment sets ``ray.ship_code: false``, as Ray refuses to
    merge the two."""
    return settings.address or os.environ.get("RAY_ADDRESS") or LOCAL


def code_runtime_env() -> dict:
    """cmpnas's own packages, uploaded by Ray to every node of a joined cluster (its dependencies
    come with the node image, as with any Ray job)."""
    import evaluators
    import orchestrator
    import search_space
    import workers

    return {"py_modules": [str(Path(package.__file__).parent) for package in (orchestrator, workers, search_space,
                                                                               evaluators)]}


def check_fits(request: ResourceRequest, strict: bool = True) -> None:
    """Refuse a task no node can hold; with ``strict`` off (a joined cluster) only warn."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    for field, key, wanted in ((request.cpus_field, "CPU", request.cpus), (request.gpus_field, "GPU", request.gpus)):
        largest = max((node.get(key, 0.0) for node in nodes), default=0.0)
        if wanted > largest:
            message = (f"{field}={wanted} but the largest node of the Ray cluster has {largest:g} {key}s: "
                       f"{request.task} would never start; lower {field}"
                       + (" (no GPU is visible to Ray here)" if key == "GPU" and not largest else ""))
            if strict:
                raise ResourceRequestError(message)
            logger.warning("%s (unless the cluster autoscales)", message)


def ray_worker_reason(error: BaseException) -> str:
    """The reason a Ray worker failed: Ray's message is the worker's traceback, whose last line says why."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__

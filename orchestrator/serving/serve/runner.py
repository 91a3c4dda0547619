"""Starting ``cmpnas serve``: checks first, then Ray and Serve; stopping it leaves nothing behind.

Rules:

* everything the files can refuse is refused before Ray starts: an export or a gallery folder that
  is not one, embeddings of different sizes, and a gallery fingerprint other than the export's
  unless ``force`` (``QueryService``'s ``check_compatible``, as ``cmpnas query``), and a search knob
  (``nprobe``, ``ef_search``) the index does not take;
* Ray: a local Ray of the machine's CPUs, or ``address``'s cluster with cmpnas's code shipped
  (``orchestrator.setup.ray_cluster``); a replica asking for more CPUs or GPUs than a node has is
  refused on a local Ray;
* a local Ray gives Serve's HTTP proxy ``PROXY_READY_TIMEOUT_S`` to become ready instead of Ray's
  5 s (unless ``RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S`` is set): on a busy node the proxy's imports
  take longer, and the controller kills a proxy that misses three checks, which fails the start
  (seen on 2 CPUs shared with training). A joined cluster keeps its own setting;
* a start that fails part way undoes what it started: the application is deleted, Serve shut
  down if this start started it, Ray if this start started it. ``RunningService.stop`` does the
  same at the end.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.config.schema import RayConfig
from orchestrator.export.package import read_manifest
from orchestrator.serving.index import check_recorded_knobs, read_gallery_record
from orchestrator.serving.query import check_compatible
from orchestrator.serving.serve.options import ServeOptions
from orchestrator.setup.ray_cluster import ResourceRequest, connect_ray

PROXY_READY_ENV = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
PROXY_READY_TIMEOUT_S = 30.0


@dataclass
class RunningService:
    """A started ``cmpnas serve``: what to undo when it stops."""

    options: ServeOptions
    started_ray: bool
    started_serve: bool

    def stop(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            if _serve_is_running():
                serve.delete(self.options.app_name)
                if self.started_serve:
                    serve.shutdown()
            if self.started_ray:
                ray.shutdown()

    def metrics_urls(self) -> list[str]:
        """The Prometheus endpoints of Ray's nodes, where the service's metrics are exported."""
        import ray

        return [f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics" for node in ray.nodes()
                if node.get("Alive") and node.get("MetricsExportPort")]


def check_files(options: ServeOptions) -> None:
    """Refuse an export and a gallery that ``QueryService`` would refuse, from their records: neither the model
    nor the index is loaded."""
    manifest = read_manifest(options.model)
    check_compatible(manifest, read_gallery_record(options.index), options.model, options.index, options.force)
    # A knob the index does not take fails here, not in every replica.
    check_recorded_knobs(options.index, nprobe=options.nprobe, ef_search=options.ef_search)


def patient_proxy_environment() -> None:
    """Give Serve's proxy ``PROXY_READY_TIMEOUT_S`` to become ready, unless the user set it: call before
    a local Ray starts, whose Serve controller inherits this environment (see the module's rules)."""
    os.environ.setdefault(PROXY_READY_ENV, str(PROXY_READY_TIMEOUT_S))


def start_serving(options: ServeOptions, on_connected: Callable[[], object] = lambda: None) -> RunningService:
    """Check the files, connect Ray, start Serve and deploy; returns once every replica is ready.

    ``on_connected`` runs once Ray is connected (``serve_until_stopped`` installs its SIGTERM handler
    then, as ``ray.init`` replaces any installed before)."""
    from ray import serve

    from orchestrator.serving.serve.app import build_app

    check_files(options)
    patient_proxy_environment()
    request = ResourceRequest("serve replicas", options.num_cpus, options.num_gpus, "--num-cpus", "--num-gpus")
    started_ray = connect_ray(RayConfig(address=options.address), [request])
    running = RunningService(options, started_ray, started_serve=False)
    try:
        on_connected()
        running.started_serve = not _serve_is_running()
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build_app(options), name=options.app_name, route_prefix="/", blocking=False)
    except BaseException:
        running.stop()
        raise
    return running


def serve_until_stopped(options: ServeOptions, log: Callable[[str], object]) -> None:
    """``cmpnas serve``: start, say where, and serve until interrupted (Ctrl-C, SIGTERM); then stop.

    SIGTERM (``kill``, a container stop) is handled as Ctrl-C, also while the replicas start: what
    was started is stopped, and the exit status is 0."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        running = start_serving(options, on_connected=lambda: signal.signal(signal.SIGTERM, _interrupt))
        try:
            log(f"serving {options.model} against {options.index} ({options.replicas} replica(s)); Ctrl-C stops")
            log(f"search: {options.url}/search  embed: {options.url}/embed  ready: {options.url}/readyz")
            for url in running.metrics_urls():
                log(f"metrics: {url}")
            while True:
                time.sleep(1.0)
        finally:
            log("stopping")
            running.stop()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _serve_is_running() -> bool:
    """Whether a Serve controller runs in the connected cluster (another application's, or ours)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True

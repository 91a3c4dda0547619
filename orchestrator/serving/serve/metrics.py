"""The Prometheus metrics of ``cmpnas serve``, recorded by each replica through ``ray.util.metrics``.

Ray exports them on every node's metrics export port (``/metrics`` in Prometheus's text format;
Ray's ``prom_metrics_service_discovery.json`` lists the ports for Prometheus), beside Serve's own
``ray_serve_*`` metrics, each name prefixed ``ray_``:

* ``ray_cmpnas_serve_requests_total{route, status}``: requests answered, by route and HTTP status;
* ``ray_cmpnas_serve_request_latency_s{route}``: seconds from the request's arrival at the replica
  to its answer (a histogram);
* ``ray_cmpnas_serve_batch_size{route}``: requests per model call of the dynamic batching, and
  ``ray_cmpnas_serve_batch_images{route}``: images per model call (buckets at n + 0.5: see
  ``BATCH_BOUNDARIES``; their ``_sum / _count`` is the exact mean up to 32 per call).
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
# Ray's exporter does not keep a histogram's sum: it estimates ``_sum`` from the bucket counts times
# each bucket's midpoint (ray-project/ray#53740). Half-integer boundaries give every batch of 1 to 32
# its own bucket with the batch size as midpoint, so ``_sum / _count`` is the exact mean batch there;
# the default powers of two read a batch of 1 as 0.5. Latency sums are midpoint estimates: read the
# latency from its buckets (histogram_quantile), not from _sum / _count.
BATCH_BOUNDARIES = [size + 0.5 for size in range(33)] + [48.5, 64.5, 128.5, 256.5, 512.5, 1024.5, 2048.5, 4096.5]


class ServeMetrics:
    """One replica's metrics (Ray sums them over the replicas of a node by their tags)."""

    def __init__(self) -> None:
        self.requests = Counter("cmpnas_serve_requests", description="Requests answered by cmpnas serve",
                                tag_keys=("route", "status"))
        self.latency = Histogram("cmpnas_serve_request_latency_s", description="Seconds to answer a request",
                                 boundaries=LATENCY_BOUNDARIES_S, tag_keys=("route",))
        self.batch_size = Histogram("cmpnas_serve_batch_size", description="Requests per batched model call",
                                    boundaries=BATCH_BOUNDARIES, tag_keys=("route",))
        self.batch_images = Histogram("cmpnas_serve_batch_images", description="Images per batched model call",
                                      boundaries=BATCH_BOUNDARIES, tag_keys=("route",))

    def answered(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(1, tags={"route": route, "status": str(status)})
        self.latency.observe(seconds, tags={"route": route})

    def batched(self, route: str, requests: int, images: int) -> None:
        self.batch_size.observe(requests, tags={"route": route})
        self.batch_images.observe(images, tags={"route": route})

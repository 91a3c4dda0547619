"""Serving measured (issue 29, part 3): a bounded load on loopback against ``cmpnas serve``, beside the
same queries answered in-process by ONNX Runtime + FAISS, so the serving overhead is a ratio from one run.

For each replica count (``--replicas``, default 1 and 2) and each batch setting (``--batch-sizes``:
Serve's ``max_batch_size``, default 1, 8 and 16; ``--batch-wait-ms`` the wait for a batch to fill),
the script starts the service in this process exactly as ``cmpnas serve`` does (``start_serving``:
a local Ray, Serve's HTTP proxy on ``--port``), waits until it is ready, sends ``--warmup`` requests
(not counted), then ``--requests`` search requests from ``--concurrency`` client threads, each with a
keep-alive connection, stopping early at ``--time-cap`` seconds. A request is one Fashion-MNIST test
image as a PNG body (``Content-Type: image/png``, ``?k=``), what a camera client sends.

Measured per setting: requests/s (answered requests over the wall time of the load), p50/p95/p99 of
the client-side latency (send to answer read), errors (a status other than 200, or no answer), the
mean batch size the replicas ran (from the service's own Prometheus histogram, scraped from Ray's
metrics port before and after the load), and the CPU time of this process's client threads; then
100 requests one at a time (no queueing): the latency a lone client sees.

Baseline, in this process and in the same run: the same PNG bytes decoded by the service's own
decoder and searched with ``QueryService`` (ONNX Runtime + FAISS) one request at a time, and the
same requests from ``--concurrency`` threads (ONNX Runtime and FAISS release the GIL). Overhead =
served p50 / in-process p50, both one request at a time (and the difference in ms); throughput =
served requests/s / in-process requests/s, both from ``--concurrency`` threads.

On a 2-core machine the client threads share the cores with the replicas and Serve's proxy: the
client's CPU time is reported so that the share is visible. Results: ``bench/results/serve_load.json``
(``--results``), with date, machine, load average before and after, and commit.

    python bench/serve_load.py --export EXPORT_DIR --index GALLERY_DIR [--requests 400 --concurrency 8]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from run_record import machine_record  # noqa: E402 - bench/, beside this script

BATCH_METRIC = "ray_cmpnas_serve_batch_size"
SINGLE_REQUESTS = 100  # requests sent one at a time after the load: latency without queueing


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True, help="an export folder (cmpnas export)")
    parser.add_argument("--index", type=Path, required=True, help="an embedded gallery (cmpnas gallery embed)")
    parser.add_argument("--requests", type=int, default=400, help="search requests per setting (after warm-up)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads sending at once")
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds per setting at most")
    parser.add_argument("--warmup", type=int, default=20, help="requests sent first and not counted")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16], help="Serve's max_batch_size")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="Serve's batch_wait_timeout_s, in ms")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0, help="which test images are the queries")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "serve_load.json")
    return parser.parse_args()


# ---------------------------------------------------------------- the queries

def query_pngs(count: int, seed: int) -> list[bytes]:
    """``count`` Fashion-MNIST test images (a seeded choice), each encoded as a PNG file's bytes."""
    from PIL import Image

    from workers.datasets.fashion_mnist import load_arrays, locate

    images = load_arrays(locate(None, download=False))["test"][0]
    rows = np.random.default_rng(seed).choice(len(images), size=count, replace=False)
    pngs = []
    for row in rows:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(images[row]).reshape(28, 28).astype(np.uint8)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


# ---------------------------------------------------------------- one load, timed

@dataclass
class Load:
    """Client-side times of one bounded load: each answered request's latency, and the errors."""

    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0

    def summary(self) -> dict:
        latencies = np.asarray(self.latencies_s) * 1000.0
        percentile = (lambda q: round(float(np.percentile(latencies, q)), 2)) if len(latencies) else (lambda q: None)
        return {"answered": len(self.latencies_s), "errors": len(self.errors), "error_examples": self.errors[:3],
                "wall_s": round(self.wall_s, 3), "requests_per_s": round(len(self.latencies_s) / self.wall_s, 1),
                "p50_ms": percentile(50), "p95_ms": percentile(95), "p99_ms": percentile(99),
                "client_cpu_s": round(self.client_cpu_s, 2)}


def run_load(send, pngs: list[bytes], concurrency: int, time_cap_s: float) -> Load:
    """Send every PNG once through ``send(png, session_slot)`` from ``concurrency`` threads; stop at the cap."""
    load, lock = Load(), threading.Lock()
    deadline = time.perf_counter() + time_cap_s
    next_request = iter(range(len(pngs)))

    def worker(slot: int) -> float:
        cpu_started = time.thread_time()
        while time.perf_counter() < deadline:
            with lock:
                number = next(next_request, None)
            if number is None:
                break
            started = time.perf_counter()
            error = send(pngs[number], slot)
            with lock:
                (load.errors.append(error) if error else load.latencies_s.append(time.perf_counter() - started))
        return time.thread_time() - cpu_started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        load.client_cpu_s = sum(pool.map(worker, range(concurrency)))
    load.wall_s = time.perf_counter() - started
    return load


def http_sender(url: str, k: int, concurrency: int):
    """A ``send`` for ``run_load``: one keep-alive session per client thread; '' on a 200, else the error."""
    import requests

    sessions = [requests.Session() for _ in range(concurrency)]

    def send(png: bytes, slot: int) -> str:
        try:
            answer = sessions[slot].post(f"{url}/search", params={"k": k}, data=png,
                                         headers={"Content-Type": "image/png"}, timeout=30)
        except requests.RequestException as error:
            return f"{type(error).__name__}: {error}"
        if answer.status_code != 200:
            return f"{answer.status_code}: {answer.text[:200]}"
        if len(answer.json()["queries"][0]["results"]) != k:
            return f"200 with fewer than {k} results"
        return ""

    return send


def in_process_sender(service, k: int):
    """A ``send`` that decodes and searches as a replica does, in this process (ONNX Runtime + FAISS)."""
    from orchestrator.serving.request_images import decode_request_image

    def send(png: bytes, slot: int) -> str:
        image = decode_request_image(png, service.image_size, service.channels)
        results = service.search(image[None], k)
        return "" if len(results[0]) == k else f"fewer than {k} results"

    return send


# ---------------------------------------------------------------- the served settings

def batch_histogram(urls: list[str]) -> tuple[float, float]:
    """(sum, count) of the search route's batch-size histogram over every node's metrics endpoint."""
    import requests

    total = count = 0.0
    pattern = re.compile(rf'^{BATCH_METRIC}_(sum|count)\{{[^}}]*route="search"[^}}]*\}} ([0-9.e+-]+)$')
    for url in urls:
        for line in requests.get(url, timeout=10).text.splitlines():
            found = pattern.match(line)
            if found:
                total, count = (total + float(found[2]), count) if found[1] == "sum" else (total, count + float(found[2]))
    return total, count


def serve_setting(args: argparse.Namespace, pngs: list[bytes], replicas: int, batch_size: int) -> dict:
    """Start the service with one setting, load it, stop it; the setting's figures."""
    from orchestrator.serving.serve.options import ServeOptions
    from orchestrator.serving.serve.runner import start_serving

    options = ServeOptions(model=args.export, index=args.index, port=args.port, replicas=replicas,
                           num_cpus=args.num_cpus, max_batch_size=batch_size,
                           batch_wait_timeout_s=args.batch_wait_ms / 1000.0, max_k=max(args.k, 1000))
    started = time.perf_counter()
    running = start_serving(options)
    try:
        ready_s = time.perf_counter() - started
        send = http_sender(options.url, args.k, args.concurrency)
        run_load(send, pngs[: args.warmup], args.concurrency, args.time_cap)
        time.sleep(1.0)  # let the warm-up's histogram reach the metrics agent before the first scrape
        urls = running.metrics_urls()
        before = batch_histogram(urls)
        load = run_load(send, pngs[args.warmup:], args.concurrency, args.time_cap)
        mean_batch = _mean_batch(urls, before)
        alone = run_load(send, pngs[args.warmup:][:SINGLE_REQUESTS], 1, args.time_cap)
    finally:
        running.stop()
    return {"replicas": replicas, "max_batch_size": batch_size, "batch_wait_ms": args.batch_wait_ms,
            "ready_s": round(ready_s, 1), "mean_batch_size": mean_batch, **load.summary(),
            "one_at_a_time": alone.summary()}


def _mean_batch(urls: list[str], before: tuple[float, float]) -> float | None:
    """The mean requests per model call during the load: the histogram's growth since ``before``."""
    deadline = time.perf_counter() + 15.0  # Ray's agent exports every few seconds
    while True:
        total, count = batch_histogram(urls)
        if count > before[1] or time.perf_counter() > deadline:
            break
        time.sleep(1.0)
    grown = count - before[1]
    return round((total - before[0]) / grown, 2) if grown > 0 else None


def in_process(args: argparse.Namespace, pngs: list[bytes]) -> dict:
    """The same queries by ``QueryService`` in this process: one at a time, and from the client threads."""
    from orchestrator.serving.query import QueryService

    service = QueryService(args.export, args.index)
    send = in_process_sender(service, args.k)
    run_load(send, pngs[: args.warmup], 1, args.time_cap)
    return {"one_at_a_time": run_load(send, pngs[args.warmup:], 1, args.time_cap).summary(),
            "threads": run_load(send, pngs[args.warmup:], args.concurrency, args.time_cap).summary()}


def overheads(served: list[dict], baseline: dict) -> list[dict]:
    """Each setting's p50 and requests/s as ratios to the in-process figures of the same run."""
    alone, threads = baseline["one_at_a_time"], baseline["threads"]
    return [{"replicas": row["replicas"], "max_batch_size": row["max_batch_size"],
             "p50_one_at_a_time_over_in_process": round(row["one_at_a_time"]["p50_ms"] / alone["p50_ms"], 1),
             "extra_ms_one_at_a_time": round(row["one_at_a_time"]["p50_ms"] - alone["p50_ms"], 2),
             "rps_over_in_process_threads": round(row["requests_per_s"] / threads["requests_per_s"], 2)}
            for row in served]


def main() -> None:
    args = parse_args()
    pngs = query_pngs(args.warmup + args.requests, args.seed)
    load_before = os.getloadavg()
    baseline = in_process(args, pngs)
    print(f"in process: {json.dumps(baseline)}", flush=True)
    served = []
    for replicas in args.replicas:
        for batch_size in args.batch_sizes:
            served.append(serve_setting(args, pngs, replicas, batch_size))
            print(json.dumps(served[-1]), flush=True)
    report = {"machine": machine_record(), "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()], "export": str(args.export),
              "index": str(args.index), "requests": args.requests, "concurrency": args.concurrency, "k": args.k,
              "time_cap_s": args.time_cap, "num_cpus_per_replica": args.num_cpus, "in_process": baseline,
              "served": served, "overhead": overheads(served, baseline)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["overhead"], indent=1))


if __name__ == "__main__":
    main()

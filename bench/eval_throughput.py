"""Cross-model retrieval evaluation throughput: FAISS flat inner product + top-k against NumPy and
PyTorch brute force, at gallery sizes 10k, 100k and 1M (d = 128), with the machine's measured
matrix-multiply rate as the ceiling, in one run.

Each back end ranks the same L2-normalised random queries against the same gallery and returns
the top-k indices. FAISS is timed twice: ``FaissInnerProductKNN.search`` (index built from the
gallery array in the call, then searched) and a ``GalleryIndex`` built once per gallery outside
the timing (as the retrieval and verification evaluators use it: one index, every query batch
searched against it). The others score in query chunks (a full
1,000 x 1M float32 score matrix would take 4 GB) and select with ``argpartition`` / ``topk``.
Rates are medians over repeats after one warm-up. Useful work = 2 x d flops per query-gallery
pair (the scoring matmul; top-k selection not counted), so fraction of ceiling = achieved GFLOP/s
/ the best sgemm rate measured here (NumPy and PyTorch, square 2048 matrices). The load average
is printed before and after: the machine may be shared.

    python bench/eval_throughput.py [--queries 1000] [--k 10] [--threads 2] [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=256, help="queries per brute-force chunk")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(args.threads))

    import faiss
    import numpy as np
    import psutil
    import torch

    from evaluators.knn import FaissInnerProductKNN

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)

    def normalised(rows: int) -> np.ndarray:
        vectors = rng.standard_normal((rows, args.dim), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    ceiling = measure_ceiling(np, torch, args.repeats)
    peak = max(ceiling.values())
    queries = normalised(args.queries)
    knn = FaissInnerProductKNN(use_gpu=False)

    def faiss_topk(gallery):
        return knn.search(queries, gallery, args.k)[1]

    indexed = {}

    def faiss_prebuilt_topk(gallery):
        # As the evaluators use it: one index per gallery (built outside the timing), searched by every batch.
        if id(gallery) not in indexed:
            indexed.clear()
            indexed[id(gallery)] = knn.build_index(gallery)
        return indexed[id(gallery)].search(queries, args.k)[1]

    def numpy_topk(gallery):
        out = np.empty((len(queries), args.k), dtype=np.int64)
        for start in range(0, len(queries), args.chunk):
            scores = queries[start:start + args.chunk] @ gallery.T
            part = np.argpartition(-scores, args.k - 1, axis=1)[:, :args.k]
            order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
            out[start:start + args.chunk] = np.take_along_axis(part, order, axis=1)
        return out

    def torch_topk(gallery):
        gallery_t, queries_t = torch.from_numpy(gallery), torch.from_numpy(queries)
        out = []
        with torch.inference_mode():
            for start in range(0, len(queries), args.chunk):
                out.append(torch.topk(queries_t[start:start + args.chunk] @ gallery_t.T, args.k, dim=1).indices)
        return torch.cat(out).numpy()

    backends = (("FAISS IndexFlatIP (index built in the call)", faiss_topk),
                ("FAISS IndexFlatIP (index built once)", faiss_prebuilt_topk), ("NumPy matmul + argpartition", numpy_topk),
                ("PyTorch matmul + topk", torch_topk))
    rows = []
    for size in (int(text) for text in args.sizes.split(",")):
        gallery = normalised(size)
        reference = None
        for name, function in backends:
            function(gallery)  # warm-up
            timings = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                found = function(gallery)
                timings.append(time.perf_counter() - started)
            seconds = statistics.median(timings)
            if reference is None:
                reference = found
            agreement = float((np.sort(found, axis=1) == np.sort(reference, axis=1)).all(axis=1).mean())
            gflops = 2 * args.dim * size * len(queries) / seconds / 1e9
            rows.append((size, name, len(queries) / seconds, seconds, gflops, gflops / peak, agreement))
            print(f"  {size:>9,} {name}: {len(queries) / seconds:,.0f} queries/s", flush=True)
        del gallery
        indexed.clear()
    load_after = os.getloadavg()

    print(f"\n### Evaluation throughput, {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, "
          f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; numpy {np.__version__}, "
          f"torch {torch.__version__}, faiss {faiss.__version__}")
    print(f"\n- {args.queries} queries, d = {args.dim}, top-{args.k}, {args.threads} threads, median of "
          f"{args.repeats} after a warm-up; load average (1, 5, 15 min) before "
          + ", ".join(f"{v:.2f}" for v in load_before) + ", after " + ", ".join(f"{v:.2f}" for v in load_after))
    print("- ceiling: sgemm 2048x2048x2048 float32, "
          + ", ".join(f"{name} {rate:.1f} GFLOP/s" for name, rate in ceiling.items()) + f"; ceiling = {peak:.1f}")
    print("\n| gallery size | back end | queries/s | seconds | GFLOP/s (2·d per pair) | fraction of ceiling | "
          "top-k equal to FAISS |")
    print("|---|---|---|---|---|---|---|")
    for size, name, qps, seconds, gflops, fraction, agreement in rows:
        print(f"| {size:,} | {name} | {qps:,.0f} | {seconds:.3f} | {gflops:.1f} | {fraction:.2f} | "
              f"{100 * agreement:.1f}% |")


def measure_ceiling(np, torch, repeats: int, n: int = 2048) -> dict[str, float]:
    """Best single-precision matrix-multiply rate of NumPy's BLAS and of PyTorch, in GFLOP/s."""
    a = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(2).standard_normal((n, n), dtype=np.float32)
    rates = {}
    for name, multiply in (("NumPy", lambda: a @ b),
                           ("PyTorch", lambda ta=torch.from_numpy(a), tb=torch.from_numpy(b): ta @ tb)):
        multiply()
        timings = []
        for _ in range(max(3, repeats)):
            started = time.perf_counter()
            multiply()
            timings.append(time.perf_counter() - started)
        rates[name] = 2 * n**3 / min(timings) / 1e9
    return rates


if __name__ == "__main__":
    main()

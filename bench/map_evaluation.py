"""Cost of one full retrieval evaluation (R@1, R@5 and mAP over the whole gallery), two ways, one run.

- ``RetrievalEvaluator`` as it is: the index's score matrix, then per query the ranks of the
  same-label items (their scores and the others' sorted apart, no full ranking).
- the earlier way (until 2026-11-27): FAISS's flat search with k = the gallery size (a k-heap per
  query) gives the full ranking, and the metrics run over it.

Both see the same L2-normalised random embeddings and labels; the script checks that they give the
same metrics. Times are the CPU-seconds of this process (``time.process_time``, every thread) and
wall seconds, medians of ``--repeats`` after a warm-up, with ``--threads`` threads (1 = what a
trial has). ``--classes`` sets how many gallery items share a query's label (Fashion-MNIST: 10
classes, 800 relevant items per query in an 8,000-image gallery).

    python bench/map_evaluation.py [--queries 2000] [--galleries 8000,50000] [--classes 10,1000]
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
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--galleries", default="8000,50000")
    parser.add_argument("--classes", default="10,1000")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)

    import faiss
    import numpy as np

    from evaluators import RetrievalEvaluator

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    def normalised(rows: int) -> np.ndarray:
        vectors = rng.standard_normal((rows, args.dim), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def earlier_way(queries, query_labels, gallery, gallery_labels, chunk=512):
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery)
        relevant = (gallery_labels[None, :] == np.unique(query_labels)[:, None]).sum(axis=1)
        relevant = relevant[np.searchsorted(np.unique(query_labels), query_labels)]
        hits_1 = hits_5 = 0
        precisions = []
        for start in range(0, len(queries), chunk):
            _, ranking = index.search(queries[start:start + chunk], len(gallery))
            hits = gallery_labels[ranking] == query_labels[start:start + chunk, None]
            hits_1 += int(hits[:, :1].any(axis=1).sum())
            hits_5 += int(hits[:, :5].any(axis=1).sum())
            at_hits = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1) * hits
            precisions.append(at_hits.sum(axis=1) / relevant[start:start + chunk])
        return 100 * hits_1 / len(queries), 100 * hits_5 / len(queries), 100 * float(np.concatenate(precisions).mean())

    def current_way(queries, query_labels, gallery, gallery_labels):
        metrics = RetrievalEvaluator().evaluate(queries, query_labels, gallery, gallery_labels)
        return metrics.recall_at_1, metrics.recall_at_5, metrics.mean_average_precision

    load_before = os.getloadavg()
    rows = []
    for size in (int(text) for text in args.galleries.split(",")):
        for classes in (int(text) for text in args.classes.split(",")):
            queries, gallery = normalised(args.queries), normalised(size)
            query_labels, gallery_labels = rng.integers(0, classes, args.queries), rng.integers(0, classes, size)
            gallery_labels[:classes] = np.arange(classes)  # every label in the gallery
            results = {}
            for name, function in (("earlier: FAISS k = gallery", earlier_way), ("RetrievalEvaluator", current_way)):
                function(queries, query_labels, gallery, gallery_labels)  # warm-up
                cpu, wall = [], []
                for _ in range(args.repeats):
                    started, started_cpu = time.perf_counter(), time.process_time()
                    metrics = function(queries, query_labels, gallery, gallery_labels)
                    cpu.append(time.process_time() - started_cpu)
                    wall.append(time.perf_counter() - started)
                results[name] = (statistics.median(cpu), statistics.median(wall), metrics)
                print(f"  {size:,} gallery, {classes} classes, {name}: {results[name][0]:.2f} CPU-s", flush=True)
            (old_cpu, old_wall, old), (new_cpu, new_wall, new) = results.values()
            agree = max(abs(a - b) for a, b in zip(old, new))
            rows.append((size, classes, old_cpu, old_wall, new_cpu, new_wall, old_cpu / new_cpu, agree, new[2]))
    load_after = os.getloadavg()

    print(f"\n### Full retrieval evaluation, {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; numpy {np.__version__}, faiss {faiss.__version__}")
    print(f"\n- {args.queries} queries, d = {args.dim}, {args.threads} thread(s), median of {args.repeats} after a "
          "warm-up; load average (1, 5, 15 min) before " + ", ".join(f"{v:.2f}" for v in load_before)
          + ", after " + ", ".join(f"{v:.2f}" for v in load_after))
    print("\n| gallery | classes | earlier: CPU-s · wall s | RetrievalEvaluator: CPU-s · wall s | CPU-s ratio | "
          "largest metric difference (points) | mAP |")
    print("|---|---|---|---|---|---|---|")
    for size, classes, old_cpu, old_wall, new_cpu, new_wall, ratio, agree, mean_ap in rows:
        print(f"| {size:,} | {classes} | {old_cpu:.2f} · {old_wall:.2f} | {new_cpu:.2f} · {new_wall:.2f} | "
              f"{ratio:.1f}x | {agree:.1e} | {mean_ap:.2f} |")


if __name__ == "__main__":
    main()

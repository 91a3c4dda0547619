"""GPU code paths, exercised on the CPU.

What these tests cannot check without a GPU (and `bench/gpu_check.sh` does on a GPU machine):
that training really runs on CUDA and is faster there, that bfloat16 autocast keeps accuracy,
that fractional `gpus_per_trial` packs several trials on one device, and that faiss-gpu's index
gives the same neighbours as the CPU index. The last test runs those paths when CUDA is present.
"""

import sys
import types

import numpy as np
import pytest
import torch

from evaluators import knn
from search_space import build_query_model, create_space
from workers.compatibility.candidate import fine_tune_candidate
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun
from workers.training.fit import OptimSettings
from workers.training.preprocess import pick_device


def test_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda"
    assert pick_device(prefer_gpu=False).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device().type == "cpu"


class _FakeGpuFaiss(types.SimpleNamespace):
    """faiss with one pretend GPU: records which searches went to the GPU, computes on the CPU."""

    def __init__(self, real):
        super().__init__(IndexFlatIP=real.IndexFlatIP, moved=[])
        self.StandardGpuResources = lambda: "resources"

    def get_num_gpus(self):
        return 1

    def index_cpu_to_gpu(self, resources, device, index):
        self.moved.append((resources, device))
        return index


def test_faiss_uses_the_gpu_index_when_it_sees_a_gpu_and_the_cpu_past_its_k_limit(monkeypatch):
    import faiss

    fake = _FakeGpuFaiss(faiss)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    backend = knn.FaissInnerProductKNN()
    assert backend.device == "gpu"
    gallery = np.eye(4, dtype=np.float32)
    _, indices = backend.search(gallery[:2], gallery, k=3)
    assert indices[:, 0].tolist() == [0, 1] and fake.moved == [("resources", 0)]
    big = np.random.default_rng(0).normal(size=(knn.GPU_MAX_K + 10, 4)).astype(np.float32)
    backend.search(big[:1], big, k=len(big))
    assert len(fake.moved) == 1, "k above the GPU limit must be served by the CPU index"
    index = backend.build_index(gallery)
    index.search(gallery[:1], k=2)
    index.search(gallery[1:], k=2)
    assert len(fake.moved) == 2, "one GPU copy per index, however many batches search it"


def test_insisting_on_a_gpu_without_one_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(knn, "faiss_gpu_count", lambda: 0)
    with pytest.raises(RuntimeError, match="no GPU"):
        knn.FaissInnerProductKNN(use_gpu=True)


def _synthetic(count=256):
    from workers.datasets import ImageSet, RetrievalData
    from workers.gallery.embeddings import GalleryEmbeddings

    rng = np.random.default_rng(0)
    images = ImageSet(rng.integers(0, 255, size=(count, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, count))
    data = RetrievalData("synthetic", images, images, images, tuple(str(i) for i in range(10)), (0.5,), (0.25,))
    gallery = GalleryEmbeddings(
        train=rng.normal(size=(count, 128)).astype(np.float32), query=None, gallery=np.zeros((1, 128), np.float32),
        classifier_weight=rng.normal(size=(10, 128)).astype(np.float32), classifier_bias=np.zeros(10, np.float32),
        logit_scale=16.0, fingerprint="x", images_embedded=0, seconds=0.0,
    )
    return data, gallery


def _train(device, mixed_precision):
    data, gallery = _synthetic()
    spec = create_space("mnv3_28", embed_dim=128, in_chans=1).smallest()
    torch.manual_seed(0)
    model = build_query_model(spec).to(device)
    settings = CompatibilityTrainingSettings(OptimSettings(epochs=1, batch_size=64, lr=1e-3),
                                         {"own_classifier": 1.0, "bct_influence": 1.0}, mixed_precision=mixed_precision)
    history = fine_tune_candidate(model, spec.resolution, settings, TrainingRun(data, gallery, torch.device(device)))
    return model, history


def test_mixed_precision_is_ignored_on_the_cpu():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded CPU convolutions do not reduce in a fixed order
    try:
        plain, _ = _train("cpu", False)
        mixed, _ = _train("cpu", True)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(plain.parameters(), mixed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: GPU training not checked")
def test_candidate_trains_on_cuda_with_bfloat16():
    model, history = _train("cuda", True)
    assert np.isfinite(history[-1]["loss"]) and next(model.parameters()).is_cuda

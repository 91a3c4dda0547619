"""Gallery sources: one model reached as timm weights, TorchScript, ONNX and precomputed embeddings
gives the same embeddings, paragon metrics and trial results; bad files get errors naming the field."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import timm.data
import torch

from evaluators import RetrievalEvaluator
from search_space import build_query_model, create_space
from workers.compatibility.candidate import fine_tune_candidate
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun
from workers.datasets import RetrievalData
from workers.gallery.classifier import choose_classifier, class_prototypes, linear_probe
from workers.gallery.embeddings import compute_gallery_embeddings
from workers.gallery.sources import (
    GALLERY_SOURCES,
    GalleryInputSpec,
    GallerySourceError,
    GallerySourceRequest,
    InputSpecRequest,
    adapt_channels,
    load_gallery_model,
)
from workers.gallery.sources.onnx_flops import count_onnx_flops
from workers.gallery.sources.precomputed import EMBEDDINGS_FILE, IDS_FILE
from workers.gallery.sources.timm_weights import PooledFeatures
from workers.training.fit import OptimSettings
from workers.training.preprocess import ModelInput, embed_images

SPEC = InputSpecRequest(size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
BACKBONE = "resnet10t"


def _request(path, spec=SPEC, **extra) -> GallerySourceRequest:
    # The TorchScript file is this test's own (gallery.allow_torchscript; its refusal: test_torchscript_trust.py).
    return GallerySourceRequest(path=path, input=spec, data_channels=1, data_image_size=28,
                                **{"allow_torchscript": True, **extra})


@pytest.fixture(scope="module")
def small_data(tiny_data) -> RetrievalData:
    pick = lambda images, count: images.subset(np.arange(count))  # noqa: E731
    return RetrievalData(tiny_data.name, pick(tiny_data.train, 600), pick(tiny_data.query, 100),
                         pick(tiny_data.gallery, 300), tiny_data.class_names, tiny_data.mean, tiny_data.std)


@pytest.fixture(scope="module")
def one_model_in_every_format(tmp_path_factory, small_data):
    """A timm resnet10t with a 10-class head, saved as a state_dict, as safetensors (with a DataParallel
    prefix), traced to TorchScript and exported to ONNX; and its embeddings of every split."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("byo")
    torch.manual_seed(0)
    model = timm.create_model(BACKBONE, pretrained=False, num_classes=10).eval()
    torch.save(model.state_dict(), folder / "weights.pth")
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    pooled = PooledFeatures(model).eval()
    example = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(pooled, example).save(str(folder / "model.torchscript.pt"))
        torch.onnx.export(pooled, (example,), str(folder / "model.onnx"), input_names=["images"],
                          output_names=["embeddings"], dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                          dynamo=True, opset_version=18, verbose=False)
    paths = {"timm": folder / "weights.pth", "timm_safetensors": folder / "weights.safetensors",
             "torchscript": folder / "model.torchscript.pt", "onnx": folder / "model.onnx"}
    reference = load_gallery_model("timm", _request(paths["timm"], backbone=BACKBONE))
    embedded = folder / "embeddings"
    embedded.mkdir()
    splits = [small_data.train, small_data.query, small_data.gallery]
    vectors = np.concatenate([reference.embed(s.images, list(s.ids), torch.device("cpu")) for s in splits])
    # Stored unnormalised and shuffled: the source normalises rows and looks images up by id.
    ids = np.concatenate([s.ids for s in splits])
    order = np.random.default_rng(0).permutation(len(ids))
    np.save(embedded / EMBEDDINGS_FILE, (vectors * 3.0)[order])
    (embedded / IDS_FILE).write_text("\n".join(ids[order]) + "\n")
    paths["embeddings"] = embedded
    return model, paths


def _load(name, paths):
    source = "timm" if name.startswith("timm") else name
    return load_gallery_model(source, _request(paths[name], backbone=BACKBONE))


def test_every_builtin_source_is_registered():
    assert set(GALLERY_SOURCES) >= {"cmpnas", "timm", "torchscript", "onnx", "embeddings"}


def near_tie_queries(query: np.ndarray, gallery: np.ndarray, query_labels, gallery_labels, epsilon: float) -> int:
    """Queries whose ranking may change when every similarity moves by at most ``epsilon``: those with
    two gallery items of different relevance within ``2 * epsilon`` of each other. (If such a pair
    exists, some neighbouring pair in the ranking differs in relevance by a gap no larger.)"""
    scores = query @ gallery.T
    order = np.argsort(-scores, axis=1)
    ranked = np.take_along_axis(scores, order, axis=1)
    relevant = np.asarray(gallery_labels)[order] == np.asarray(query_labels)[:, None]
    close = ranked[:, :-1] - ranked[:, 1:] <= 2 * epsilon
    return int((close & (relevant[:, :-1] != relevant[:, 1:])).any(axis=1).sum())


def metric_tolerance(reference, embeddings, data) -> float:
    """The most R@1 or mAP (in points) may move between two sources of one model: a query whose
    ranking can change moves its AP (and R@1) by at most 1, i.e. 100 / queries points."""
    epsilon = float(np.abs(embeddings.query @ embeddings.gallery.T - reference.query @ reference.gallery.T).max())
    near = near_tie_queries(reference.query, reference.gallery, data.query.labels, data.gallery.labels, epsilon)
    return 100.0 * near / len(data.query) + 1e-9


def test_the_tolerance_counts_only_queries_whose_ranking_can_change():
    query = np.array([[1.0, 0.0], [0.0, 1.0]])
    # Query 0: a relevant and an irrelevant item 1e-6 apart; query 1: the same items 0.5 apart.
    gallery = np.array([[0.6, 0.2], [0.6 - 1e-6, 0.7]])
    assert near_tie_queries(query, gallery, [0, 0], [0, 1], epsilon=1e-6) == 1
    assert near_tie_queries(query, gallery, [0, 0], [0, 1], epsilon=1e-8) == 0
    assert near_tie_queries(query, gallery, [0, 0], [0, 0], epsilon=1.0) == 0, "same relevance: no metric moves"


def test_one_model_through_every_source_gives_the_same_search_inputs(one_model_in_every_format, small_data):
    _, paths = one_model_in_every_format
    results = {}
    for name in paths:
        gallery = _load(name, paths)
        assert gallery.embed_dim == 512  # resnet10t's pooled features, not a fixed 128
        embeddings = compute_gallery_embeddings(gallery, small_data, torch.device("cpu"), classifier="prototypes")
        paragon = RetrievalEvaluator().evaluate(embeddings.query, small_data.query.labels, embeddings.gallery,
                                                small_data.gallery.labels)
        results[name] = (embeddings, paragon)
    reference, reference_paragon = results["timm"]
    for name, (embeddings, paragon) in results.items():
        for split in ("train", "query", "gallery"):
            np.testing.assert_allclose(getattr(embeddings, split), getattr(reference, split), atol=1e-4, err_msg=name)
        np.testing.assert_allclose(embeddings.classifier_weight, reference.classifier_weight, atol=1e-4)
        # Rankings may differ only where similarities nearly tie: the metrics' tolerance follows from the
        # embeddings' own difference, not from a figure tuned to one ONNX Runtime release.
        tolerance = metric_tolerance(reference, embeddings, small_data)
        assert paragon.recall_at_1 == pytest.approx(reference_paragon.recall_at_1, abs=tolerance), name
        assert paragon.mean_average_precision == pytest.approx(reference_paragon.mean_average_precision,
                                                               abs=tolerance), name
    assert results["embeddings"][0].images_embedded == 0  # looked up, not embedded
    assert results["onnx"][0].images_embedded == len(small_data.train) + len(small_data.query) + len(small_data.gallery)

    # The same trial (fixed seed) against each: the same cross-model result.
    space = create_space("mnv3_28", embed_dim=512, in_chans=1)
    spec = space.smallest()
    cross = {}
    for name, (embeddings, _) in results.items():
        torch.manual_seed(0)
        model = build_query_model(spec)
        settings = CompatibilityTrainingSettings(OptimSettings(epochs=1, batch_size=128, lr=3e-3, seed=0))
        fine_tune_candidate(model, spec.resolution, settings, TrainingRun(small_data, embeddings, torch.device("cpu")))
        queries = embed_images(model, small_data.query.images, ModelInput(small_data.mean, small_data.std, spec.resolution))
        cross[name] = RetrievalEvaluator().evaluate(queries, small_data.query.labels, embeddings.gallery,
                                                    small_data.gallery.labels).recall_at_1
    assert max(cross.values()) - min(cross.values()) <= 1.0, cross


def test_fingerprints_cover_the_file_and_the_input_spec(one_model_in_every_format, tmp_path):
    _, paths = one_model_in_every_format
    first = _load("timm", paths)
    assert first.fingerprint == _load("timm", paths).fingerprint
    other_spec = InputSpecRequest(size=32, channels=3, mean=(0.4, 0.4, 0.4), std=(0.25, 0.25, 0.25))
    assert load_gallery_model("timm", _request(paths["timm"], other_spec, backbone=BACKBONE)).fingerprint \
        != first.fingerprint
    changed = tmp_path / "changed.pth"
    state = torch.load(paths["timm"], weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1
    torch.save(state, changed)
    assert load_gallery_model("timm", _request(changed, backbone=BACKBONE)).fingerprint != first.fingerprint
    identity = first.identity()
    assert identity["source"] == "timm" and identity["embed_dim"] == 512 and identity["input"]["size"] == 32


def test_timm_defaults_come_from_the_weights_and_timms_data_config(one_model_in_every_format):
    _, paths = one_model_in_every_format
    gallery = load_gallery_model("timm", _request(paths["timm"], InputSpecRequest(), backbone=BACKBONE))
    size = timm.data.resolve_model_data_config(timm.create_model(BACKBONE))["input_size"][-1]  # 176 for resnet10t
    assert gallery.input_spec == GalleryInputSpec(size, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    fc = load_gallery_model("timm", _request(paths["timm"], backbone=BACKBONE, head="fc"))
    assert fc.embed_dim == 10  # a named head: the 10-class layer's output


def test_wrong_files_are_refused_with_the_field_and_the_fix(one_model_in_every_format, tmp_path):
    model, paths = one_model_in_every_format
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(GallerySourceError, match="neither a safetensors file nor a state_dict"):
        load_gallery_model("timm", _request(text, backbone=BACKBONE))
    pickled = tmp_path / "whole_model.pt"
    torch.save(model, pickled)
    with pytest.raises(GallerySourceError, match="pickles a whole model"):
        load_gallery_model("timm", _request(pickled, backbone=BACKBONE))
    with pytest.raises(GallerySourceError, match="not a TorchScript file"):
        load_gallery_model("torchscript", _request(paths["timm"]))
    with pytest.raises(GallerySourceError, match="not an ONNX model"):
        load_gallery_model("onnx", _request(paths["timm"]))
    with pytest.raises(GallerySourceError, match="gallery.input.mean"):
        load_gallery_model("torchscript", _request(paths["torchscript"], InputSpecRequest(size=32)))
    with pytest.raises(GallerySourceError, match="unknown gallery.source 'keras'"):
        load_gallery_model("keras", _request(paths["timm"]))


def test_missing_and_unexpected_weight_keys_are_listed(one_model_in_every_format, tmp_path):
    _, paths = one_model_in_every_format
    state = torch.load(paths["timm"], weights_only=True)
    del state["conv1.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(GallerySourceError) as error:
        load_gallery_model("timm", _request(broken, backbone=BACKBONE))
    assert "missing keys: ['conv1.0.weight']" in str(error.value)
    assert "unexpected keys: ['extra.weight']" in str(error.value)
    with pytest.raises(GallerySourceError, match="gallery.backbone"):
        load_gallery_model("timm", _request(paths["timm"], backbone="resnet18"))


def test_an_onnx_input_shape_that_cannot_take_the_size_is_refused(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    path = tmp_path / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 16, 16),), str(path), input_names=["images"], dynamo=False)
    spec = InputSpecRequest(size=32, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(GallerySourceError, match="cannot take gallery.input.size=32"):
        load_gallery_model("onnx", _request(path, spec))
    # The static shape is the default when gallery.input.size is not given.
    fitted = load_gallery_model("onnx", _request(path, InputSpecRequest(mean=(0.5,) * 3, std=(0.5,) * 3)))
    assert fitted.input_spec.size == 16 and fitted.embed_dim == 4 * 14 * 14


def test_precomputed_embeddings_are_checked(one_model_in_every_format, small_data, tmp_path):
    _, paths = one_model_in_every_format
    source = paths["embeddings"]
    vectors = np.load(source / EMBEDDINGS_FILE)
    ids = (source / IDS_FILE).read_text().splitlines()

    def folder(name, rows, lines):
        path = tmp_path / name
        path.mkdir()
        np.save(path / EMBEDDINGS_FILE, rows)
        (path / IDS_FILE).write_text("\n".join(lines) + "\n")
        return path

    with pytest.raises(GallerySourceError, match="ids but"):
        load_gallery_model("embeddings", _request(folder("short", vectors, ids[:-1])))
    bad = vectors.copy()
    bad[3, 0] = np.nan
    with pytest.raises(GallerySourceError, match="NaN or infinite"):
        load_gallery_model("embeddings", _request(folder("nan", bad, ids)))
    with pytest.raises(GallerySourceError, match="shape"):
        load_gallery_model("embeddings", _request(folder("flat", vectors[:, 0], ids)))
    partial = load_gallery_model("embeddings", _request(folder("partial", vectors[1:], ids[1:])))
    with pytest.raises(GallerySourceError, match="lacks 1 of"):
        compute_gallery_embeddings(partial, small_data, torch.device("cpu"))
    with pytest.raises(GallerySourceError, match="must be a folder"):
        load_gallery_model("embeddings", _request(source / EMBEDDINGS_FILE))


def test_channels_are_repeated_or_averaged():
    gray = np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2)
    rgb = adapt_channels(gray, 3)
    assert rgb.shape == (2, 3, 2, 2) and (rgb == gray).all()
    colour = np.stack([np.full((2, 2), 10), np.full((2, 2), 20), np.full((2, 2), 33)]).astype(np.uint8)[None]
    assert adapt_channels(colour, 1).reshape(-1).tolist() == [21] * 4


def test_onnx_flops_agree_with_fvcore(one_model_in_every_format):
    model, paths = one_model_in_every_format
    from evaluators import count_complexity

    fvcore = count_complexity(PooledFeatures(model), (3, 32, 32)).flops
    onnx = count_onnx_flops(paths["onnx"], (1, 3, 32, 32)).flops
    assert onnx == pytest.approx(fvcore, rel=0.05)


def test_built_classifiers(small_data, one_model_in_every_format):
    _, paths = one_model_in_every_format
    gallery = _load("timm", paths)
    train = gallery.embed(small_data.train.images, list(small_data.train.ids), torch.device("cpu"))
    labels = small_data.train.labels
    prototypes = class_prototypes(train, labels, 10)
    probe = linear_probe(train, labels, 10)
    np.testing.assert_allclose(np.linalg.norm(prototypes.weight, axis=1), 1.0, atol=1e-5)

    def accuracy(classifier):
        logits = classifier.logit_scale * train @ classifier.weight.T + classifier.bias
        return (logits.argmax(1) == labels).mean()

    assert accuracy(probe) >= accuracy(prototypes)
    assert accuracy(prototypes) > 0.2  # well above chance (0.1) even for random features
    assert choose_classifier("auto", gallery, train, labels, 10).kind == "prototypes"
    with pytest.raises(GallerySourceError, match="no classifier for these 10 classes"):
        choose_classifier("from_model", gallery, train, labels, 10)


def test_the_paragon_cost_is_measured_for_every_model_source(one_model_in_every_format):
    model, paths = one_model_in_every_format
    from evaluators import count_complexity

    fvcore = count_complexity(PooledFeatures(model), (3, 32, 32)).mflops
    for name in ("timm", "torchscript", "onnx"):
        assert _load(name, paths).measure_cost().mflops == pytest.approx(fvcore, rel=0.05), name
    assert _load("embeddings", paths).measure_cost() is None  # gallery.mflops must say it


def _export_onnx(net, example, path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (example,), str(path), input_names=["images"], dynamo=False, **options)
    return path


def _small_conv_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())


@pytest.mark.parametrize("fixed_batch", [1, 3])
def test_an_onnx_model_with_a_fixed_batch_size_embeds_any_number_of_images(tmp_path, fixed_batch):
    """Fed batches of exactly its size, the last one padded: the embeddings of every image, no more."""
    net = _small_conv_net()
    path = _export_onnx(net, torch.rand(fixed_batch, 3, 32, 32), tmp_path / "fixed.onnx")
    gallery = load_gallery_model("onnx", _request(path))
    images = np.random.default_rng(0).integers(0, 256, (7, 1, 28, 28), dtype=np.uint8)
    embedded = gallery.embed(images, [str(i) for i in range(7)], torch.device("cpu"))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(net(gallery.input_spec.model_input(images)), dim=1).numpy()
    assert embedded.shape == (7, 8) and gallery.fixed_batch == fixed_batch
    np.testing.assert_allclose(embedded, expected, atol=1e-5)


def test_an_onnx_model_that_runs_only_on_one_image_is_refused_at_load(tmp_path):
    """Declared with a dynamic batch but reshaped to one row inside: the load check runs two images."""

    class OneRow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _small_conv_net()

        def forward(self, images):
            return self.net(images).reshape(1, -1)

    path = _export_onnx(OneRow(), torch.rand(1, 3, 32, 32), tmp_path / "one_row.onnx",
                        dynamic_axes={"images": {0: "batch"}})
    with pytest.raises(GallerySourceError, match=r"one_row.onnx maps a batch of 2 images.*dynamic batch dimension"):
        load_gallery_model("onnx", _request(path))


def test_onnx_runtime_errors_while_embedding_name_the_model_and_the_fix(tmp_path):
    path = _export_onnx(_small_conv_net(), torch.rand(1, 3, 32, 32), tmp_path / "net.onnx",
                        dynamic_axes={"images": {0: "batch"}})
    gallery = load_gallery_model("onnx", _request(path))
    with pytest.raises(GallerySourceError, match=r"(?s)net.onnx fails on a batch of 2 images of 1x32x32.*dynamic batch"):
        gallery.run_batch(np.zeros((2, 1, 32, 32), np.float32))


@pytest.mark.parametrize("recorded, wrong", [({"size": "big", "channels": 3}, "'size' is 'big'"),
                                             ({"mean": ["a", 0.5, 0.5]}, "'mean' is"),
                                             ("not json", "not a JSON object")])
def test_unreadable_cmpnas_input_metadata_names_the_key_and_the_format(tmp_path, recorded, wrong):
    import json

    import onnx

    path = _export_onnx(_small_conv_net(), torch.rand(1, 3, 32, 32), tmp_path / "meta.onnx",
                        dynamic_axes={"images": {0: "batch"}})
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "cmpnas.input", recorded if isinstance(recorded, str) else json.dumps(recorded)
    onnx.save(model, str(path))
    unset = InputSpecRequest()
    with pytest.raises(GallerySourceError, match=rf"'cmpnas.input'.*{wrong}.*expected format is a JSON object"):
        load_gallery_model("onnx", _request(path, unset))
    # gallery.input takes precedence over the metadata: set in full, the model loads.
    assert load_gallery_model("onnx", _request(path, SPEC)).input_spec.size == 32

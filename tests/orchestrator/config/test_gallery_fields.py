"""Fields of the gallery model cmpnas trains apply to source cmpnas only (issue 27)."""

import pytest

from orchestrator.config import ConfigError, load_config, validate_config
from orchestrator.config.schema import NULL_IS_DEFAULT, TRAINED_GALLERY_FIELDS, GalleryConfig, trained_only_fields
from orchestrator.search.state import with_earlier_defaults
from orchestrator.tracking.client import config_params


def test_switching_the_gallery_source_with_set_works_on_the_embedded_default():
    # gallery.allow_torchscript: the TorchScript opt-in (tests/workers/gallery/test_torchscript_trust.py).
    config = load_config(None, ["gallery.source=torchscript", "gallery.path=M.pt", "gallery.allow_torchscript=true"])
    assert config.gallery.source == "torchscript" and config.gallery.path == "M.pt"
    # The embedded default's embed_dim 128 is not taken as the user's: nothing reads it as chosen.
    assert not set(TRAINED_GALLERY_FIELDS) & config.gallery.model_fields_set


@pytest.mark.parametrize("source", ["torchscript", "onnx"])
def test_the_params_of_another_source_list_no_field_of_the_trained_model(source):
    config = load_config(None, [f"gallery.source={source}", "gallery.path=M.pt", "gallery.allow_torchscript=true"])
    params = config_params(config.recorded_tree())
    assert not {f"gallery.{name}" for name in (*TRAINED_GALLERY_FIELDS, "backbone")} & set(params)
    assert params["gallery.source"] == source and params["gallery.path"] == "M.pt"
    # The model cmpnas trains records them all.
    trained = config_params(load_config(None).recorded_tree())
    assert {f"gallery.{name}" for name in TRAINED_GALLERY_FIELDS} <= set(trained) and "gallery.backbone" in trained


def test_timm_keeps_its_backbone():
    config = load_config(None, ["gallery.source=timm", "gallery.path=w.pth", "gallery.backbone=resnet18"])
    assert config.gallery.backbone == "resnet18" and "backbone" in config.gallery.applicable_fields()
    assert "embed_dim" not in config.gallery.applicable_fields()
    assert "backbone" in trained_only_fields("onnx") and "backbone" not in trained_only_fields("timm")


def test_null_takes_the_default_and_is_accepted_for_every_source():
    assert load_config(None, ["gallery.embed_dim=null"]).gallery.embed_dim == 128
    assert load_config(None, ["gallery.mixed_precision=null"]).gallery.mixed_precision is False
    config = load_config(None, ["gallery.source=onnx", "gallery.path=M.onnx", "gallery.embed_dim=null",
                                "gallery.epochs=null", "gallery.mixed_precision=null"])
    assert config.gallery.source == "onnx"


@pytest.mark.parametrize("field", NULL_IS_DEFAULT)
def test_the_published_schema_admits_null_where_null_takes_the_default(field):
    # An editor validating against the JSON schema, and the config fuzzer, read null from the annotation:
    # a field that takes null as its default must say so there, not only in its validator.
    accepted = GalleryConfig.model_json_schema()["properties"][field]
    assert {"type": "null"} in accepted.get("anyOf", []), f"gallery.{field} accepts null but its schema does not"
    assert getattr(validate_config({"gallery": {field: None}}).gallery, field) == GalleryConfig.model_fields[field].default


@pytest.mark.parametrize(("field", "value"), [("embed_dim", 1280), ("epochs", 5), ("patience", 3),
                                              ("backbone", "resnet18"), ("min_steps", 0), ("mixed_precision", True)])
def test_a_field_of_the_trained_model_set_for_another_source_is_refused_with_the_fix(field, value):
    with pytest.raises(ConfigError, match=rf"gallery.{field}={value!r} set\(s\) the gallery model cmpnas trains "
                                          r".*gallery.source is 'torchscript'.*remove it \(or set null\)"):
        validate_config({"gallery": {"source": "torchscript", "path": "M.pt", "allow_torchscript": True, field: value},
                         "data": {"validation_size": 100}})


def test_a_recorded_search_of_another_source_from_before_gallery_min_steps_resumes():
    recorded = {"gallery": {"source": "onnx", "path": "M.onnx", "embed_dim": 128, "epochs": 2}}
    validate_config(with_earlier_defaults(recorded))  # min_steps filled with its default, not the earlier 0
    assert with_earlier_defaults({"gallery": {"source": "cmpnas"}})["gallery"]["min_steps"] == 0


def test_the_gallery_model_trains_at_least_min_steps():
    gallery = load_config(None).gallery
    assert gallery.epochs_for(10000) == gallery.epochs  # the quickstart: 79 steps an epoch, 158 in 2 epochs
    assert gallery.epochs_for(700) == 20  # 6 steps an epoch: raised to reach 120
    assert load_config(None, ["gallery.min_steps=0"]).gallery.epochs_for(700) == gallery.epochs


def test_the_embedded_default_train_size_does_not_follow_a_set_of_another_source():
    """Fashion-MNIST's 12000 is no cap on a collection whose files give the splits (workers.datasets.splits)."""
    assert load_config(None).data.train_size == 12000
    assert load_config(None, ["data.source=manifest", "data.root=m.csv"]).data.train_size is None
    assert load_config(None, ["data.source=manifest", "data.train_size=500"]).data.train_size == 500
    assert load_config(None, ["data.source=fashion_mnist"]).data.train_size == 12000
    # Without a value in the file the user wrote, nothing is capped either (the code default is null: all).
    assert validate_config({"data": {"source": "manifest"}}).data.train_size is None


def test_a_file_written_for_one_source_switched_with_set_drops_its_trained_model_fields(tmp_path, caplog):
    """The how-to's gallery-search.yaml (source timm, backbone resnet18) checked as TorchScript and ONNX."""
    import yaml

    path = tmp_path / "gallery-search.yaml"
    path.write_text(yaml.safe_dump({"gallery": {"source": "timm", "backbone": "resnet18", "path": "w.pth",
                                                "epochs": 2, "min_steps": 0}}))
    config = load_config(path, ["gallery.source=torchscript", "gallery.path=M.pt", "gallery.allow_torchscript=true"])
    assert config.gallery.source == "torchscript"
    warned = "the config file's gallery.min_steps=0, gallery.backbone='resnet18', written for gallery.source 'timm'"
    assert warned in caplog.text and "gallery.epochs" not in caplog.text  # the default: nothing to say
    # Set with --set as well, or written for the other source in the file itself: refused.
    with pytest.raises(ConfigError, match=r"gallery.backbone='resnet18' set\(s\) the gallery model cmpnas trains"):
        load_config(path, ["gallery.source=onnx", "gallery.path=M.onnx", "gallery.backbone=resnet18"])
    path.write_text(yaml.safe_dump({"gallery": {"source": "onnx", "path": "M.onnx", "epochs": 5}}))
    with pytest.raises(ConfigError, match=r"gallery.epochs=5 set\(s\)"):
        load_config(path)

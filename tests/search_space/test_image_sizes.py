"""Which image sizes a search space is for (``SearchSpace.image_sizes``), and the search's refusal of a mismatch.

The rule (``search_space.spaces``): a space declares the ``data.image_size`` range it is meant for, from its
smallest resolution up; a search refuses data outside it before decoding anything
(``orchestrator.setup.inputs.check_space_fits_images``), naming search_space.name, data.image_size and the
spaces that fit. A space that declares nothing is never refused.
"""

from pathlib import Path

import pytest
import yaml

from orchestrator.config import ConfigError, load_config, validate_config
from orchestrator.setup.data import check_space_fits_images
from orchestrator.setup.inputs import prepare_search_inputs
from search_space import SearchSpace, create_space, list_spaces, register_space
from search_space.registry import SPACES

ROOT = Path(__file__).resolve().parents[2]


def _space(name: str) -> SearchSpace:
    return create_space(name, embed_dim=16, in_chans=1)


@pytest.mark.parametrize("name", list_spaces())
def test_every_registered_space_declares_a_range_that_starts_at_its_smallest_resolution(name):
    space = _space(name)
    assert space.image_sizes is not None, f"{name} declares no image_sizes"
    low, high = space.image_sizes
    assert low == min(space.resolutions), "below the smallest resolution every candidate enlarges the images"
    assert high >= max(space.resolutions)
    assert all(space.fits_image_size(resolution) for resolution in space.resolutions)
    assert not space.fits_image_size(low - 1) and not space.fits_image_size(high + 1)
    # A budgeted copy of the space keeps the declaration (search_space.budget copies every field).
    from search_space import within_budget

    assert within_budget(space, 1e9).image_sizes == space.image_sizes


def test_the_built_in_ranges_leave_no_size_from_20_to_1024_px_without_a_space():
    spaces = [_space(name) for name in list_spaces()]
    assert all(any(space.fits_image_size(size) for space in spaces) for size in range(20, 1025))
    assert {name: _space(name).image_sizes for name in ("mnv3_28", "mnv3_64", "ofa_mnv3_224")} == {
        "mnv3_28": (20, 56), "mnv3_64": (48, 128), "ofa_mnv3_224": (128, 1024)}


def _config(name: str, size: int):
    data = {"source": "fashion_mnist"} if size == 28 else {"source": "image_folder", "root": "photos",
                                                            "image_size": size}
    return validate_config({"data": data, "search_space": {"name": name}})


@pytest.mark.parametrize("name, size, fits", [
    ("ofa_mnv3_224", 28, ["mnv3_28"]), ("ofa_mnv3_224", 64, ["mnv3_64"]), ("mnv3_28", 224, ["ofa_mnv3_224"]),
    ("mnv3_28", 128, ["mnv3_64", "ofa_mnv3_224"]), ("mnv3_64", 28, ["mnv3_28"]), ("mnv3_64", 256, ["ofa_mnv3_224"]),
])
def test_a_mismatch_is_refused_naming_the_fields_and_the_spaces_that_fit(name, size, fits):
    with pytest.raises(ConfigError) as refused:
        check_space_fits_images(_config(name, size))
    message = str(refused.value)
    assert f"search_space.name={name!r}" in message and f"data.image_size={size}" in message
    assert f"fits {size} px ({', '.join(fits)})" in message
    low, high = _space(name).image_sizes
    assert f"within {low}-{high}" in message and "docs/howto/own-data.md" in message


@pytest.mark.parametrize("name, size", [("mnv3_28", 28), ("mnv3_28", 32), ("mnv3_28", 20), ("mnv3_64", 48),
                                        ("mnv3_64", 64), ("mnv3_64", 128), ("ofa_mnv3_224", 128),
                                        ("ofa_mnv3_224", 224), ("ofa_mnv3_224", 518)])
def test_sizes_within_the_range_pass(name, size):
    check_space_fits_images(_config(name, size))


def test_no_fitting_space_says_so():
    with pytest.raises(ConfigError, match=r"No space fits 16 px: set data.image_size within 20-56"):
        check_space_fits_images(_config("mnv3_28", 16))


def test_every_shipped_config_fits_its_space():
    paths = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "deploy" / "ray-cluster" / "search.yaml"]
    for path in paths:
        check_space_fits_images(load_config(path))
    configmap = yaml.safe_load((ROOT / "deploy" / "kuberay" / "configmap.yaml").read_text())
    check_space_fits_images(validate_config(yaml.safe_load(configmap["data"]["search.yaml"])))


def test_a_space_that_declares_no_range_is_never_refused():
    base = _space("mnv3_28")

    @register_space
    def undeclared_test_space(*, embed_dim: int, in_chans: int) -> SearchSpace:
        return SearchSpace(name="undeclared_test_space", in_chans=in_chans, embed_dim=embed_dim, stem_width=8,
                           head_width=32, resolutions=base.resolutions, stages=base.stages)

    try:
        assert undeclared_test_space(embed_dim=8, in_chans=1).image_sizes is None
        for size in (8, 28, 224, 2048):
            check_space_fits_images(_config("undeclared_test_space", size))
        # It is not offered as fitting anything either.
        with pytest.raises(ConfigError) as refused:
            check_space_fits_images(_config("ofa_mnv3_224", 28))
        assert "undeclared_test_space" not in str(refused.value)
    finally:
        SPACES.unregister("undeclared_test_space")


def test_a_range_must_be_ordered_and_positive():
    base = _space("mnv3_28")
    for sizes in ((0, 28), (56, 20)):
        with pytest.raises(ValueError, match="image_sizes of space 'bad' must be"):
            SearchSpace(name="bad", in_chans=1, embed_dim=8, stem_width=8, head_width=32,
                        resolutions=base.resolutions, stages=base.stages, image_sizes=sizes)


def test_a_search_refuses_the_mismatch_before_loading_any_data(monkeypatch):
    monkeypatch.setattr("orchestrator.setup.data.load_data",
                        lambda config: pytest.fail("the data were loaded before the space was checked"))
    with pytest.raises(ConfigError, match=r"search_space.name='ofa_mnv3_224'.*data.image_size=28"):
        prepare_search_inputs(_config("ofa_mnv3_224", 28), lambda message: None)

import random

import pytest
import torch

from search_space import (
    ArchSpec,
    OutOfSpaceError,
    SpecFormatError,
    StageSpec,
    build_query_model,
    create_space,
    list_spaces,
)

SPACES = list_spaces()


@pytest.fixture(params=SPACES)
def space(request):
    return create_space(request.param, embed_dim=64, in_chans=1)


def test_registry_lists_builtin_spaces_and_rejects_unknown_names():
    assert {"mnv3_28", "mnv3_64"} <= set(SPACES)
    with pytest.raises(KeyError, match="allowed values"):
        create_space("no_such_space", embed_dim=64, in_chans=1)


def test_samples_are_in_space_and_cover_every_choice(space):
    rng = random.Random(0)
    samples = [space.sample(rng) for _ in range(300)]
    for spec in samples:
        assert space.validate(spec) is spec
    for position, (field, choices) in enumerate(space.genes()):
        seen = {space.to_genes(spec)[position] for spec in samples}
        assert seen == set(choices), field


def test_mutation_stays_in_space_and_changes_something(space):
    rng = random.Random(1)
    for _ in range(100):
        parent = space.sample(rng)
        child = space.mutate(parent, rng, gene_probability=0.1)
        assert space.contains(child)
        assert child != parent


def test_crossover_takes_each_gene_from_a_parent(space):
    rng = random.Random(2)
    for _ in range(50):
        a, b = space.sample(rng), space.sample(rng)
        child = space.crossover(a, b, rng)
        for x, y, z in zip(space.to_genes(a), space.to_genes(b), space.to_genes(child)):
            assert z in (x, y)


def test_json_encoding_is_stable_and_round_trips(space):
    spec = space.sample(random.Random(3))
    text = spec.to_json()
    assert ArchSpec.from_json(text) == spec
    assert ArchSpec.from_json(text).arch_id == spec.arch_id
    assert text == ArchSpec.from_dict(spec.to_dict()).to_json()
    assert " " not in text


@pytest.mark.parametrize(
    ("change", "field", "builder_refuses"),
    [
        (lambda s: {"resolution": 27}, "resolution=27", True),
        (lambda s: {"stages": (StageSpec(s.stages[0].depth, 9, 3, s.stages[0].width),) + s.stages[1:]},
         "stages[0].kernel=9", True),
        (lambda s: {"stages": s.stages[:-1]}, "stages has", True),
        # A standalone build follows the spec's own embed_dim; only a search space fixes it.
        (lambda s: {"embed_dim": 7}, "embed_dim=7", False),
    ],
)
def test_out_of_space_specs_are_refused_naming_field_and_allowed_values(space, change, field, builder_refuses):
    spec = space.sample(random.Random(4))
    bad = ArchSpec(**{**spec.__dict__, **change(spec)})
    with pytest.raises(OutOfSpaceError, match=field.replace("[", r"\[").replace("]", r"\]")):
        space.validate(bad)
    if builder_refuses:
        with pytest.raises(OutOfSpaceError, match="allowed values|stages has"):
            build_query_model(bad)


@pytest.mark.parametrize("text", ["not json", "[]", '{"space": "mnv3_28"}', '{"space":"mnv3_28","in_chans":1,'
                                  '"resolution":"28","stages":[],"embed_dim":64}'])
def test_malformed_spec_json_is_refused(text):
    with pytest.raises(SpecFormatError):
        ArchSpec.from_json(text)


def test_builder_gives_normalised_embeddings_of_the_gallery_dimension(space):
    for spec in (space.smallest(), space.largest()):
        model = build_query_model(spec).eval()
        with torch.no_grad():
            out = model(torch.randn(3, 1, spec.resolution, spec.resolution))
        assert out.shape == (3, 64)
        assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_larger_specs_cost_more(space):
    from evaluators import count_complexity

    small, large = space.smallest(), space.largest()
    flops = [count_complexity(build_query_model(s), (1, s.resolution, s.resolution)).flops for s in (small, large)]
    assert 0 < flops[0] < flops[1]

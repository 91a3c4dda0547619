"""The one registry pattern behind search spaces, data sources, losses, tasks and strategies."""

import sys
from collections.abc import Mapping

import pytest

from search_space import create_space, list_spaces, register_space
from search_space.registry import SPACES, Registry, UnknownNameError

PLUGIN_MODULES = ("cmpnas_test_plugin_registry", "cmpnas_test_plugin_builtins")


def test_a_name_defaults_to_the_entry_name_attribute_else_its_function_name():
    registry = Registry("plugin", "plugins.name")

    @registry.register()
    class Declared:
        name = "declared_name"

    @registry.register()
    def undeclared():
        pass

    @registry.register("explicit")
    def renamed():
        pass

    assert registry.names() == ["declared_name", "explicit", "undeclared"]
    assert registry["declared_name"] is Declared and registry["explicit"] is renamed


def test_a_duplicate_name_is_refused_naming_both_entries():
    registry = Registry("plugin", "plugins.name")

    @registry.register("same")
    def first():
        pass

    def second():
        pass

    with pytest.raises(ValueError, match=r"plugin 'same' is registered twice: .*first and .*second"):
        registry.register("same")(second)
    assert registry["same"] is first


def test_an_unknown_name_names_the_field_the_value_and_the_allowed_values():
    registry = Registry("plugin", "plugins.name")
    registry.register("b")(object)
    registry.register("a")(object)
    with pytest.raises(UnknownNameError) as unknown:
        registry["c"]
    assert str(unknown.value) == "unknown plugins.name 'c'; allowed values are ['a', 'b']"
    # A KeyError for mapping lookups and a ValueError for validators (pydantic reports those).
    assert isinstance(unknown.value, KeyError) and isinstance(unknown.value, ValueError)
    assert registry.check("a") == "a"
    with pytest.raises(ValueError, match="allowed values are"):
        registry.check("c")


def test_the_registry_is_a_read_only_mapping():
    registry = Registry("plugin", "plugins.name")
    registry.register("one")(int)
    assert isinstance(registry, Mapping)
    assert dict(registry.items()) == {"one": int} and len(registry) == 1 and "one" in registry
    assert registry.get("missing") is None
    with pytest.raises(TypeError):
        registry["two"] = float


def test_unregister_removes_an_entry_and_refuses_an_unknown_one():
    registry = Registry("plugin", "plugins.name")
    registry.register("gone")(int)
    assert registry.unregister("gone") is int and "gone" not in registry
    with pytest.raises(UnknownNameError, match="unknown plugins.name 'gone'"):
        registry.unregister("gone")


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """Two modules on sys.path: a registry, and the built-ins that register into it on import."""
    (tmp_path / f"{PLUGIN_MODULES[0]}.py").write_text(
        "from search_space.registry import Registry\n"
        f"PLUGINS = Registry('plugin', 'plugins.name', builtins={{'builtin_plugin': {PLUGIN_MODULES[1]!r}}})\n"
    )
    (tmp_path / f"{PLUGIN_MODULES[1]}.py").write_text(
        f"from {PLUGIN_MODULES[0]} import PLUGINS\n"
        "@PLUGINS.register()\n"
        "def builtin_plugin():\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for module in PLUGIN_MODULES:
        sys.modules.pop(module, None)


def test_builtins_are_named_without_an_import_and_register_on_first_lookup(plugin_package):
    from cmpnas_test_plugin_registry import PLUGINS

    PLUGINS.register("users_plugin")(object)
    assert PLUGINS.names() == ["builtin_plugin", "users_plugin"]
    assert "builtin_plugin" in PLUGINS and PLUGINS.check("builtin_plugin") == "builtin_plugin"
    assert PLUGIN_MODULES[1] not in sys.modules, "names and checks import no implementation"
    assert PLUGINS["builtin_plugin"].__name__ == "builtin_plugin"
    assert PLUGIN_MODULES[1] in sys.modules


def test_a_builtin_name_is_reserved_for_the_module_that_declares_it(plugin_package):
    from cmpnas_test_plugin_registry import PLUGINS

    with pytest.raises(ValueError, match="'builtin_plugin' is a built-in name, registered by cmpnas_test_plugin_builtins"):
        PLUGINS.register("builtin_plugin")(object)


def _every_registry():
    from evaluators.tasks import TASKS
    from orchestrator.config.registries import STRATEGIES
    from workers.datasets.registry import SOURCES
    from workers.gallery.sources.registry import GALLERY_SOURCES
    from workers.training.loss_registry import LOSSES

    return [SPACES, SOURCES, GALLERY_SOURCES, LOSSES, TASKS, STRATEGIES]


@pytest.mark.parametrize("registry", _every_registry(), ids=lambda registry: registry.field)
def test_every_declared_builtin_is_registered_by_the_module_that_declares_it(registry):
    assert registry.builtins, f"{registry.field} declares its built-ins"
    for name, module in registry.builtins.items():
        entry = registry[name]  # imports the module when needed
        assert entry.__module__ == module, (name, entry.__module__, module)
    # ... and nothing a built-in module registers goes undeclared.
    for module in set(registry.builtins.values()):
        registered = {name for name, entry in registry._entries.items() if entry.__module__ == module}
        assert registered == {name for name, owner in registry.builtins.items() if owner == module}, module


def test_search_spaces_use_the_registry():
    assert list_spaces() == SPACES.names() and {"mnv3_28", "mnv3_64"} <= set(SPACES)
    with pytest.raises(ValueError, match="search space 'mnv3_28' is registered twice"):
        register_space(SPACES["mnv3_28"])
    with pytest.raises(KeyError, match=r"unknown search_space.name 'vit'; allowed values are \['mnv3_28'"):
        create_space("vit", embed_dim=64, in_chans=1)


def test_the_errors_registries_and_output_lock_load_without_pytorch():
    """search_space's names load on first use, so what every package imports (the errors, the registries)
    and the lock a refused job takes do not start PyTorch: a process that only checks or refuses stays light."""
    import subprocess

    probe = ("import sys\nimport search_space, search_space.errors, search_space.registry\n"
             "import orchestrator.common.output_lock\n"
             "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'loaded PyTorch'\n"
             "from search_space import ArchSpec, build_query_model\n"
             "assert 'torch' in sys.modules and build_query_model.__module__ == 'search_space.builder'\n"
             "assert 'build_query_model' in dir(search_space)\n"
             "assert set(search_space.__all__) == set(search_space._EXPORTS)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import search_space

        search_space.nothing  # noqa: B018

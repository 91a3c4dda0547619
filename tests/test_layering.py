"""The layering docs/architecture.md states, enforced: one-way imports between packages and between the
subpackages inside them, no import circle, one definition of each MLflow tag name.

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING``. The allowed
directions are read from the ``layers`` block of docs/architecture.md, so the page and the test
cannot disagree: a unit may import itself and the units to the left of it on its line (for
``orchestrator`` and ``workers``, the subpackages; on the ``packages`` line, whole packages), never
a unit on its right, and never a sibling (units grouped in braces sit side by side).
"""

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_space", "evaluators", "workers", "orchestrator")
LAYERS_BLOCK = re.compile(r"```layers\n(.*?)```", re.S)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _sources() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The cmpnas modules ``path`` imports: ``from a.b import c`` names ``a.b.c`` when that is a module."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    sources, found = _sources(), set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import of {node.module}"
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in sources else node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _unit(module: str) -> str:
    """The layering unit of a module: a package (search_space, evaluators), or a subpackage or entry
    module of workers and orchestrator (``workers.gallery``, ``orchestrator.cli``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] in ("workers", "orchestrator") and len(parts) > 1 else parts[0]


@cache
def _layers() -> dict[str, tuple[str, int, int]]:
    """unit -> (line, position, group) from docs/architecture.md's ``layers`` block."""
    block = LAYERS_BLOCK.search((ROOT / "docs" / "architecture.md").read_text())
    assert block, "docs/architecture.md has a ```layers block"
    layers = {}
    for line in block.group(1).strip().splitlines():
        label, _, chain = line.partition(":")
        prefix = "" if label.strip() == "packages" else label.strip() + "."
        for position, group in enumerate(part.strip() for part in chain.split("<-")):
            for name in group.strip("{}").split(","):
                layers[prefix + name.strip()] = (label.strip(), position, position)
    return layers


def _allowed(importer: str, imported: str) -> bool:
    source, target = _unit(importer), _unit(imported)
    if source == target or target in ("workers", "orchestrator"):  # itself; a package's (empty) root
        return True
    source_top, target_top = source.split(".")[0], target.split(".")[0]
    if source_top != target_top:
        packages = _layers()
        return packages[target_top][1] < packages[source_top][1]
    layers = _layers()
    assert source in layers and target in layers, f"{source} or {target} is missing from docs/architecture.md"
    return layers[target][1] < layers[source][1]


def test_every_unit_is_placed_in_the_documented_layers():
    units = {_unit(module) for module in _sources()} - {"workers", "orchestrator"}
    missing = sorted(unit for unit in units if unit not in _layers())
    assert not missing, f"add these to the ```layers block of docs/architecture.md: {missing}"


def test_imports_follow_the_documented_directions_including_inside_functions_and_type_checking():
    wrong = [f"{module} imports {imported}" for module, path in sorted(_sources().items())
             for imported in sorted(_imports(path)) if not _allowed(module, imported)]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle_between_modules():
    sources = _sources()
    graph = {module: {name for name in _imports(path) if name in sources and name != module}
             for module, path in sources.items()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = trail[trail.index(imported):] if imported in trail else [imported]
                raise AssertionError(f"import circle: {' -> '.join([*cycle, imported])}")
            if imported not in state:
                visit(imported, [*trail, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_layering_check_sees_imports_inside_functions_and_under_type_checking(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from orchestrator.search.driver import run_search\n"
                     "def later():\n    from orchestrator.cli import app\n")
    assert _imports(probe) == {"orchestrator.search.driver", "orchestrator.cli"}
    assert not _allowed("orchestrator.tracking.client", "orchestrator.search.driver")
    assert not _allowed("orchestrator.tracking.client", "orchestrator.strategies.registry"), "siblings"
    assert _allowed("orchestrator.search.driver", "orchestrator.tracking.client")
    assert not _allowed("workers.trial", "orchestrator.config")


def test_tracking_modules_are_layered_one_way():
    layers = ["orchestrator.tracking.tags", "orchestrator.tracking.client", "orchestrator.tracking.journal",
              "orchestrator.tracking.callbacks"]
    sources = _sources()
    for index, module in enumerate(layers):
        upward = _imports(sources[module]) & set(layers[index + 1:])
        assert not upward, f"{module} imports the layers above it: {sorted(upward)}"


def test_mlflow_tag_names_are_defined_only_in_the_tags_module():
    elsewhere = []
    for path in (ROOT / "orchestrator").rglob("*.py"):
        if path.name == "tags.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
                elsewhere += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.endswith("_TAG")]
    assert not elsewhere


def test_reading_a_front_does_not_load_the_trainable():
    # `cmpnas pareto` needs the tracking client and the report, not torch's trainable or Ray Tune.
    code = ("import sys, orchestrator.cli, orchestrator.results.front, orchestrator.results.front_rendering, "
            "orchestrator.results.final_training, orchestrator.tracking.client; "
            "print(sorted(m for m in ('workers.trial', 'ray.tune', 'orchestrator.search.driver') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_schema_checks_registered_names_without_importing_an_implementation():
    # Every registry's built-ins are declared by name (search_space.registry): loading the default
    # configuration imports no strategy, data source, gallery source or loss.
    implementations = ("orchestrator.strategies", "workers.datasets.fashion_mnist", "workers.gallery.sources.timm_weights",
                       "workers.gallery.sources.onnx_model", "workers.training.losses", "search_space.spaces")
    code = ("import sys; from orchestrator.config import load_config; load_config(); "
            f"print(sorted(m for m in {implementations!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout

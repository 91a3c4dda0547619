"""The layering that docs/architecture.md states: one-way imports, one definition of each record name."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "workers", "search_space", "evaluators")
# A package may import only those listed for it (data flows driver -> worker -> evaluators).
ALLOWED = {
    "search_space": {"search_space"},
    "evaluators": {"evaluators", "search_space"},
    "workers": {"workers", "search_space", "evaluators"},
    "orchestrator": set(PACKAGES),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def test_packages_import_only_along_the_data_flow():
    wrong = [f"{module} imports {imported}" for module, path in _sources().items()
             for imported in _imports(path) if imported.split(".")[0] not in ALLOWED[module.split(".")[0]]]
    assert not wrong


def test_tracking_modules_are_layered_one_way_and_import_nothing_inside_functions():
    layers = ["orchestrator.tags", "orchestrator.tracking", "orchestrator.journal", "orchestrator.mlflow_callback"]
    sources = _sources()
    for index, module in enumerate(layers):
        upward = _imports(sources[module]) & set(layers[index + 1:])
        assert not upward, f"{module} imports the layers above it: {sorted(upward)}"
        assert _imports(sources[module]) == _imports(sources[module], top_level_only=True), (
            f"{module} imports cmpnas modules inside functions")


def test_no_import_cycles_between_modules():
    sources = _sources()
    graph = {module: {name for name in _imports(path, top_level_only=True) if name in sources and name != module}
             for module, path in sources.items()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            # A package imports its own modules to re-export them: that is no cycle.
            if module and imported.startswith(module + "."):
                continue
            if state.get(imported) == "open":
                cycle = trail[trail.index(imported):] if imported in trail else [imported]
                raise AssertionError(f"import cycle: {' -> '.join([*cycle, imported])}")
            if imported not in state:
                visit(imported, [*trail, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


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
    code = ("import sys, orchestrator.cli, orchestrator.pareto_report, orchestrator.final_training_report, "
            "orchestrator.tracking; "
            "print(sorted(m for m in ('workers.trial', 'ray.tune', 'orchestrator.driver') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"

"""The shape the code keeps (docs/architecture.md, "Other changes"): small functions with few
parameters, and a search driver a newcomer reads at a glance."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workers", "search_space", "evaluators")
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 6
MAX_DRIVER_LINES = 300


def _functions():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(ROOT), node


def _parameters(node: ast.FunctionDef) -> list[str]:
    arguments = node.args
    names = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
    names += [f"*{a.arg}" for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return [name for name in names if name not in ("self", "cls")]


def _is_cli_command(node: ast.FunctionDef) -> bool:
    """A typer command: its options are its parameters."""
    return any(isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", None) == "command"
               for decorator in node.decorator_list)


def test_no_production_function_is_longer_than_60_lines():
    long = [f"{path}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for path, node in _functions() if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


def test_no_function_takes_more_than_6_parameters_but_cli_commands():
    wide = [f"{path}:{node.lineno} {node.name}: {len(_parameters(node))} parameters"
            for path, node in _functions() if len(_parameters(node)) > MAX_PARAMETERS and not _is_cli_command(node)]
    assert not wide, "\n".join(wide)


def test_the_search_driver_stays_short():
    lines = len((ROOT / "orchestrator" / "search" / "driver.py").read_text().splitlines())
    assert lines <= MAX_DRIVER_LINES, f"orchestrator/search/driver.py has {lines} lines"


def test_the_checks_see_what_they_measure():
    source = "def wide(a, b, c, d, e, f, g):\n" + "    x = 1\n" * 61
    (node,) = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)]
    assert len(_parameters(node)) == 7 and node.end_lineno - node.lineno + 1 == 62
    command = ast.parse("@app.command()\ndef search(a, b, c, d, e, f, g):\n    pass\n").body[0]
    assert _is_cli_command(command)

"""Every error cmpnas reports to its user derives from one class, ``CmpnasError``, which the CLI
catches alone (search_space/errors.py). The few errors that never reach a user are listed here with
the reason."""

import importlib
import inspect
import pkgutil

from search_space.errors import CmpnasError

PACKAGES = ("search_space", "evaluators", "workers", "orchestrator")
# Caught inside cmpnas, never shown: why each one is not a CmpnasError.
INTERNAL = {
    "workers.datasets.image_files.ImageDecodeError": "one undecodable file, counted as a bad file by the loader",
}


def _error_classes() -> dict[str, type]:
    found = {}
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if (inspect.isclass(value) and issubclass(value, BaseException)
                        and value.__module__ == module.__name__):
                    found[f"{module.__name__}.{name}"] = value
    return found


def test_every_error_of_cmpnas_is_a_cmpnas_error_or_listed_as_internal():
    errors = _error_classes()
    assert len(errors) >= 20, sorted(errors)
    outside = sorted(name for name, error in errors.items() if not issubclass(error, CmpnasError) and name not in INTERNAL)
    assert not outside, f"derive these from CmpnasError (or list them in INTERNAL with the reason): {outside}"
    assert all(name in errors for name in INTERNAL), "an internal error listed here no longer exists"


def test_the_cli_catches_one_class():
    import ast
    from pathlib import Path

    import orchestrator.cli

    tree = ast.parse(Path(orchestrator.cli.__file__).read_text())
    caught = {ast.unparse(handler.type) for handler in ast.walk(tree)
              if isinstance(handler, ast.ExceptHandler) and handler.type is not None}
    assert caught == {"CmpnasError"}, caught

"""The how-to pages (docs/howto/*.md) against the code, without running them.

``bench/howto_check.py`` runs the pages' commands on small data (minutes); this test reads them in
seconds, with the same parser, so that a renamed subcommand, option or config field, or a moved file,
fails CI:

- every ``cmpnas`` invocation (also after ``env -u ...`` and after ``--`` of ``ray job submit``)
  names a subcommand of the real CLI (``orchestrator.cli.app``, through click) and only options that
  subcommand has;
- every ``--set section.field=value`` names a field of the config schema, and every config file a
  page writes (``cat > X.yaml <<EOF``) validates against it, with the page's own ``export`` values;
- every repository path and relative link a page names exists;
- ``kubectl`` commands and workers joining with ``ray start --address`` are marked as not run, and
  every mark says what the command needs; the bench has settings for every page and every
  variable it sets is one the page exports.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HOWTO = ROOT / "docs" / "howto"
PAGES = sorted(HOWTO.glob("*.md"))
EXPECTED_PAGES = {"own-data.md", "own-gallery-model.md", "cluster.md", "export-and-serve.md"}
REPO_DIRS = ("deploy", "docs", "configs", "bench", "tests", "orchestrator", "workers", "search_space", "evaluators")


def _bench():
    spec = importlib.util.spec_from_file_location("howto_check", ROOT / "bench" / "howto_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("howto_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


BENCH = _bench()


def _click_app():
    import typer

    from orchestrator.cli import app

    return typer.main.get_command(app)


def cmpnas_argvs(words: list[str]) -> list[list[str]]:
    """The cmpnas invocations in one simple command's words: as the command, after ``env`` and its
    options and assignments, or after ``--`` (``ray job submit ... -- cmpnas ...``)."""
    found = []
    rest = list(words)
    while rest and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", rest[0]):
        rest = rest[1:]
    if rest and rest[0] == "env":
        rest = rest[1:]
        while rest and (rest[0].startswith("-") or "=" in rest[0]):
            rest = rest[2:] if rest[0] in ("-u", "--unset") else rest[1:]
    if rest and PurePosixPath(rest[0]).name == "cmpnas":
        found.append(["cmpnas", *rest[1:]])
    if "--" in words:
        after = words[words.index("--") + 1:]
        if after and PurePosixPath(after[0]).name == "cmpnas":
            found.append(["cmpnas", *after[1:]])
    return found


def check_cmpnas_argv(argv: list[str], where: str) -> list[str]:
    """Subcommand and options of ``argv`` against the real CLI; returns the ``--set`` values."""
    group = _click_app()
    assert len(argv) > 1, f"{where}: `cmpnas` without a subcommand"
    command = group.commands.get(argv[1])
    assert command is not None, f"{where}: `cmpnas {argv[1]}` is not a command; known: {sorted(group.commands)}"
    rest, name = argv[2:], argv[1]
    if hasattr(command, "commands"):
        assert rest and rest[0] in command.commands, (
            f"{where}: `cmpnas {name} {rest[:1]}` is not a command; known: {sorted(command.commands)}")
        command, name, rest = command.commands[rest[0]], f"{name} {rest[0]}", rest[1:]
    options = {opt for param in command.params for opt in (*param.opts, *getattr(param, "secondary_opts", ()))}
    overrides = []
    for position, token in enumerate(rest):
        if token.startswith("-") and token != "-":
            option = token.split("=")[0]
            assert option in options | {"--help"}, f"{where}: {option} is not an option of `cmpnas {name}`"
            if token.startswith("--set="):
                overrides.append(token.split("=", 1)[1])
            elif token == "--set":
                overrides.append(rest[position + 1])
    return overrides


def check_field_path(assignment: str, where: str) -> None:
    """``section.field=value`` names a field of the config schema."""
    from pydantic import BaseModel

    from orchestrator.config import CmpnasConfig

    path = assignment.split("=", 1)[0].split(".")
    model: type[BaseModel] = CmpnasConfig
    for depth, key in enumerate(path):
        assert key in model.model_fields, f"{where}: --set {assignment}: {'.'.join(path[:depth + 1])} is not a config field"
        annotation = model.model_fields[key].annotation
        if depth < len(path) - 1:
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel), (
                f"{where}: --set {assignment}: {'.'.join(path[:depth + 1])} is a value, not a section")
            model = annotation


def page_exports(commands) -> dict[str, str]:
    values = {}
    for command in commands:
        match = BENCH.EXPORT.match(command.text)
        if match and "\n" not in command.text:
            words = shlex.split(BENCH._code_part(command.text))
            values[match.group(1)] = words[1].split("=", 1)[1]
    return values


@pytest.fixture(scope="module")
def parsed():
    return {page.name: BENCH.page_commands(page.read_text()) for page in PAGES}


def test_the_four_journeys_have_a_page():
    assert EXPECTED_PAGES <= {page.name for page in PAGES}


def test_the_parser_cuts_commands_and_reads_the_marks():
    text = "\n".join([
        "```bash", "export A=1   # yours", "cmpnas search \\", "  --config x.yaml", "cat > c.yaml <<'EOF'",
        "data: {source: fashion_mnist}", "EOF", "env -u X cmpnas search   # refused: no token",
        "# not run by bench/howto_check.py: needs a second machine", "ray start --address=h:6379", "```",
        "```bash", "# not run by bench/howto_check.py: needs Kubernetes", "kubectl get pods", "kubectl get svc", "```",
    ])
    commands = BENCH.page_commands(text)
    assert [c.text.splitlines()[0] for c in commands] == [
        "export A=1   # yours", "cmpnas search \\", "cat > c.yaml <<'EOF'", "env -u X cmpnas search   # refused: no token",
        "ray start --address=h:6379", "kubectl get pods", "kubectl get svc"]
    assert commands[2].text.endswith("EOF") and commands[1].line == 3
    assert [c.skip for c in commands] == [None, None, None, None, "needs a second machine", "needs Kubernetes",
                                          "needs Kubernetes"]
    assert commands[3].refused == "no token" and not commands[1].refused
    assert BENCH.command_words(commands[1]) == [["cmpnas", "search", "--config", "x.yaml"]]
    assert cmpnas_argvs(BENCH.command_words(commands[3])[0]) == [["cmpnas", "search"]]


@pytest.mark.parametrize("page", [page.name for page in PAGES])
def test_every_cmpnas_command_is_a_real_subcommand_with_real_options_and_fields(page, parsed):
    checked = 0
    for command in parsed[page]:
        for words in BENCH.command_words(command):
            for argv in cmpnas_argvs(words):
                where = f"docs/howto/{page}:{command.line}"
                for assignment in check_cmpnas_argv(argv, where):
                    check_field_path(assignment, where)
                checked += 1
    assert checked, f"docs/howto/{page} shows no cmpnas command"


@pytest.mark.parametrize("page", [page.name for page in PAGES])
def test_every_config_a_page_writes_validates_against_the_schema(page, parsed):
    from orchestrator.config import validate_config

    commands = parsed[page]
    exports = page_exports(commands)
    for command in commands:
        first, *body = command.text.splitlines()
        if not (re.search(r"cat > \S+\.ya?ml <<", first) and body):
            continue
        text = "\n".join(body[:-1])
        for name, value in exports.items():
            text = text.replace(f"${name}", value)
        assert "$" not in text, f"docs/howto/{page}:{command.line}: a variable the page does not export: {text}"
        validate_config(yaml.safe_load(text), source=f"docs/howto/{page}:{command.line}")


@pytest.mark.parametrize("page", [page.name for page in PAGES])
def test_every_path_and_link_a_page_names_exists(page):
    path = HOWTO / page
    text = path.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+://", target):
            assert (path.parent / target).exists(), f"docs/howto/{page}: the link {target} leads nowhere"
    pattern = r"(?<![\w./$-])((?:%s)/[\w./-]*[\w/])" % "|".join(REPO_DIRS)
    named = set(re.findall(pattern, text)) | set(re.findall(r"\bREADME\.md\b", text))
    assert named, f"docs/howto/{page} names no file of the repository"
    for target in named:
        assert (ROOT / target).exists(), f"docs/howto/{page} names {target}, which does not exist"


@pytest.mark.parametrize("page", [page.name for page in PAGES])
def test_commands_that_need_a_cluster_are_marked_and_say_what_they_need(page, parsed):
    for command in parsed[page]:
        where = f"docs/howto/{page}:{command.line}"
        words = [word for simple in BENCH.command_words(command) for word in simple]
        if words[:1] == ["kubectl"] or "kubectl" in command.text.split()[:1]:
            assert command.skip, f"{where}: kubectl needs a Kubernetes cluster: mark it not run"
        if words[:2] == ["ray", "start"] and any(word.startswith("--address") for word in words):
            assert command.skip, f"{where}: a worker joining a head needs a second machine: mark it not run"
        if command.skip:
            assert command.skip.startswith("needs ") and len(command.skip) > len("needs "), where


def test_the_bench_has_settings_for_every_page_and_sets_only_what_pages_export(parsed, tmp_path):
    data = {name: tmp_path / name for name in ("PHOTOS", "MANIFEST", "GALLERY_WEIGHTS", "GALLERY_TORCHSCRIPT",
                                               "GALLERY_ONNX")}
    data["RAY_PORT"] = 6379
    for page in PAGES:
        variables, suffix = BENCH.page_settings(page.stem, tmp_path, data)
        exported = page_exports(parsed[page.name])
        assert set(variables) <= set(exported), f"{page.name}: the bench sets {sorted(set(variables) - set(exported))}"
        for subcommand, overrides in suffix.items():
            assert subcommand in ("search", "gallery train"), subcommand
            for assignment in overrides:
                check_field_path(assignment, f"bench suffix of {page.name}")
        assert "bench/howto_check.py" in page.read_text(), f"{page.name} does not say how it is checked"

"""Run every command block of the how-to pages (docs/howto/*.md) on small data, so the pages do not rot.

For each page, every fenced ```bash block is cut into commands (a line, its ``\\`` continuations, and
a here-document up to its delimiter) and the commands run in order, as written, in one bash process
with the page's own fresh folder as working directory and its own ``HOME``. A command that fails
stops its page (later ones depend on it). Per page the script reports pass or fail, and per command
its status, exit code and seconds; everything goes to ``bench/results/howto_check.json``.

What the script changes, and nothing else (each page's "How this page is checked" says the same):

- **Variables.** A command ``export NAME=...`` whose NAME is in the page's table below gets the
  script's value instead (a generated image folder, a free port, a folder inside the run). A name
  in the table that the page no longer exports is an error: the page and this script drifted.
- **The small-data suffix.** ``cmpnas`` on the PATH is a wrapper that appends the page's
  ``--set`` overrides (below) to the subcommands they are listed for (``search``, ``gallery train``),
  so that a search takes minutes on 2 CPUs; every other command runs as written.
- **``ray start --head``** runs as a head of its own: ``--block`` in its own session (ended by
  process group, never by name), a private ``--temp-dir``, a free port instead of the page's, a free
  dashboard-agent port, no dashboard, node IP 127.0.0.1. ``ray stop`` ends that head only. Other
  ``ray`` commands run as written.
- **Skipped commands.** A command marked ``# not run by bench/howto_check.py: needs <what>`` (on its
  own line, or a comment line just above it, or as the first line of its block for the whole block)
  is not run; it is listed with its reason.
- **Refusals.** A command whose comment starts ``# refused:`` must exit non-zero (the page shows
  an error on purpose); it passes when it does, and its seconds are recorded.

Data: ``PHOTOS``, 1,200 colour PNGs at 64 px in 12 classes (a tint and a stripe pattern per class,
noise per image); ``MANIFEST``, a CSV over the same files (60 train, 10 query, 30 gallery per class);
a timm ``resnet18`` with random weights (12-class head) as safetensors, traced TorchScript and ONNX
of its pooled features at 3 x 64 x 64; Fashion-MNIST from the Debian package for the cluster page.

    .venv/bin/python bench/howto_check.py [--workdir DIR] [--page cluster ...] [--keep]

Run it on a quiet machine (it records the load average before and after): the searches train on the
CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOWTO = REPO / "docs" / "howto"
RESULTS = REPO / "bench" / "results" / "howto_check.json"
VENV_BIN = Path(sys.executable).parent

SKIP_MARKER = re.compile(r"#\s*not run by bench/howto_check\.py:\s*(needs .+?)\s*$")
REFUSED_MARKER = re.compile(r"#\s*refused:\s*(.+?)\s*$")
HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
EXPORT = re.compile(r"^export\s+([A-Za-z_][A-Za-z0-9_]*)=")

# Small-data settings, per page and subcommand (see the module docstring); each page states them.
PHOTO_SUFFIX = ["search.num_candidates=2", "training.epochs=1", "training.min_steps=0", "gallery.epochs=1",
                "resources.measure_latency=false"]
# export-and-serve keeps training.min_steps (120): its search must end with candidates that pass the
# compatibility floors, or there is nothing to export; one epoch of 12 steps left both below them.
SERVE_SUFFIX = [value for value in PHOTO_SUFFIX if value != "training.min_steps=0"]
CLUSTER_SUFFIX = ["data.train_size=1000", "data.query_size=200", "data.gallery_size=800", "gallery.epochs=1",
                  "search.num_candidates=2", "search.max_concurrent=2", "resources.cpus_per_trial=1",
                  "training.epochs=1", "resources.measure_latency=false"]
PAGE_TIMEOUT_S = 3600


@dataclass
class Command:
    """One command of a page: its text as written (continuations and here-document included)."""

    block: int
    line: int  # 1-based line in the page where it starts
    text: str
    skip: str | None = None  # "needs ..." when marked not to be run
    refused: str | None = None  # the reason, when it must exit non-zero

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0]


def bash_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every ```bash fence of a Markdown page."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if current is None and stripped.startswith("```bash"):
            current, start = [], number + 1
        elif current is not None and stripped.startswith("```"):
            blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    if current is not None:
        raise ValueError(f"a ```bash block opened at line {start - 1} is never closed")
    return blocks


def page_commands(text: str) -> list[Command]:
    """Every command of every bash block, in order, with its markers (module rules)."""
    commands = []
    for index, (start, lines) in enumerate(bash_blocks(text)):
        block_skip, pending_skip, position = None, None, 0
        first = next((line for line in lines if line.strip()), "")
        if first.strip().startswith("#") and SKIP_MARKER.search(first):
            block_skip = SKIP_MARKER.search(first).group(1)
        while position < len(lines):
            line = lines[position]
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                marker = SKIP_MARKER.search(stripped) if stripped.startswith("#") else None
                pending_skip = marker.group(1) if marker else pending_skip if stripped else None
                position += 1
                continue
            begin = position
            taken = [line]
            while taken[-1].rstrip().endswith("\\") and position + 1 < len(lines):
                position += 1
                taken.append(lines[position])
            heredoc = next((match for text_line in taken for match in [HEREDOC.search(_code_part(text_line))]
                            if match), None)
            if heredoc:
                delimiter = heredoc.group(2)
                while position + 1 < len(lines):
                    position += 1
                    taken.append(lines[position])
                    if lines[position].strip() == delimiter:
                        break
                else:
                    raise ValueError(f"line {start + begin}: here-document {delimiter} is never closed")
            position += 1
            head = taken[0] if heredoc else taken[-1]
            trailing_skip = SKIP_MARKER.search(head)
            refused = REFUSED_MARKER.search(head)
            skip = block_skip or (trailing_skip.group(1) if trailing_skip else None) or pending_skip
            commands.append(Command(index, start + begin, "\n".join(taken), skip,
                                    refused.group(1) if refused else None))
            pending_skip = None
    return commands


def _code_part(line: str) -> str:
    """A line without its trailing shell comment (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for position, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position]
    return line


def command_words(command: Command) -> list[list[str]]:
    """The words of each simple command in ``command`` (here-document bodies left out), for checks
    that read commands without running them: split at ``&&``, ``||``, ``;``, ``|`` and ``&``."""
    lines = command.text.splitlines()
    heredoc = HEREDOC.search(_code_part(lines[0])) if lines else None
    if heredoc:
        lines = lines[:1]
    joined = _without_substitutions(" ".join(_code_part(line).rstrip().rstrip("\\") for line in lines))
    try:
        lexer = shlex.shlex(joined, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return []
    words, current = [], []
    for token in tokens:
        if set(token) <= set(";&|"):
            if current:
                words.append(current)
            current = []
        elif set(token) <= set("<>"):
            current.append(token)
        else:
            current.append(token)
    if current:
        words.append(current)
    return words


def _without_substitutions(text: str) -> str:
    """``text`` with every ``$(...)`` replaced by the word SUBSTITUTION (nested ones included)."""
    out, depth, position = [], 0, 0
    while position < len(text):
        if text.startswith("$(", position):
            if depth == 0:
                out.append("SUBSTITUTION")
            depth += 1
            position += 2
            continue
        char = text[position]
        if depth and char == "(":
            depth += 1
        elif depth and char == ")":
            depth -= 1
        elif not depth:
            out.append(char)
        position += 1
    return "".join(out)


# -- data ------------------------------------------------------------------------------------------

def write_photos(root: Path, classes: int = 12, per_class: int = 100, size: int = 64) -> Path:
    """Colour PNGs: a tint and a stripe orientation per class, noise and an offset per image."""
    import numpy as np
    from PIL import Image

    if (root / "DONE").exists():
        return root
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    for label in range(classes):
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        tint = np.array([(label * 97) % 256, (label * 53 + 80) % 256, (label * 31 + 160) % 256], dtype=np.float64)
        angle = np.pi * label / classes
        for index in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            stripes = np.sin((np.cos(angle) * x + np.sin(angle) * y) / 3.0 + phase)[..., None]
            pixels = tint * (0.6 + 0.4 * stripes) + rng.normal(0, 20, (size, size, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB").save(folder / f"{index:03d}.png")
    (root / "DONE").write_text("ok")
    return root


def write_manifest(photos: Path, path: Path) -> Path:
    """path,label,split over ``photos``: per class 60 train, 10 query, 30 gallery; paths relative to the CSV."""
    rows = ["path,label,split"]
    for folder in sorted(p for p in photos.iterdir() if p.is_dir()):
        for index, image in enumerate(sorted(folder.glob("*.png"))):
            split = "train" if index < 60 else "query" if index < 70 else "gallery"
            rows.append(f"{os.path.relpath(image, path.parent)},{folder.name},{split}")
    path.write_text("\n".join(rows) + "\n")
    return path


def write_gallery_models(folder: Path, size: int = 64, classes: int = 12) -> dict[str, Path]:
    """A timm resnet18 with random weights, as a team would ship it: safetensors, TorchScript, ONNX."""
    import timm
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO))
    from workers.gallery.sources.timm_weights import PooledFeatures

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"GALLERY_WEIGHTS": folder / "gallery_resnet18.safetensors",
             "GALLERY_TORCHSCRIPT": folder / "gallery_resnet18.torchscript.pt",
             "GALLERY_ONNX": folder / "gallery_resnet18.onnx"}
    if all(path.exists() for path in paths.values()):
        return paths
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=classes).eval()
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()},
              str(paths["GALLERY_WEIGHTS"]))
    pooled = PooledFeatures(model).eval()
    example = torch.rand(2, 3, size, size)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(pooled, example).save(str(paths["GALLERY_TORCHSCRIPT"]))
        torch.onnx.export(pooled, (example,), str(paths["GALLERY_ONNX"]), input_names=["images"],
                          output_names=["embeddings"], dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                          dynamo=True, opset_version=18, verbose=False)
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- wrappers --------------------------------------------------------------------------------------

CMPNAS_WRAPPER = """#!{python}
# cmpnas with the page's small-data --set suffix (bench/howto_check.py).
import json, os, sys
GROUPS = ("gallery", "supernet", "space")
args = sys.argv[1:]
words = args[:2] if args and args[0] in GROUPS else args[:1]
suffix = json.loads(os.environ.get("HOWTO_SUFFIX", "{{}}")).get(" ".join(words), [])
extra = [part for value in suffix for part in ("--set", value)]
os.execv({real!r}, [{real!r}, *args, *extra])
"""

RAY_WRAPPER = """#!{python}
# ray, with `start --head` as a private head and `stop` ending that head only (bench/howto_check.py).
import os, signal, subprocess, sys, time
REAL = {real!r}
args = sys.argv[1:]
pidfile = os.environ["HOWTO_RAY_PIDFILE"]
if args[:1] == ["start"] and "--head" in args:
    kept = [a for i, a in enumerate(args[1:], 1) if not (a.startswith("--port") or a == "--block"
            or (i > 1 and args[i - 1] == "--port"))]
    port = os.environ["HOWTO_RAY_PORT"]
    command = [REAL, "start", *kept, "--block", f"--port={{port}}", f"--temp-dir={{os.environ['HOWTO_RAY_TMP']}}",
               "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               f"--dashboard-agent-listen-port={{os.environ['HOWTO_RAY_AGENT_PORT']}}"]
    log = open(os.environ["HOWTO_RAY_LOG"], "ab")
    head = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    open(pidfile, "w").write(str(head.pid))
    sys.path.insert(0, {repo!r})
    from orchestrator.setup.ray_join import ClusterJoinError, check_can_join
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            sys.exit(f"ray start --head exited with {{head.returncode}}; see {{os.environ['HOWTO_RAY_LOG']}}")
        try:
            check_can_join(f"127.0.0.1:{{port}}")
            print(f"Ray head started (bench: pid {{head.pid}}, port {{port}})")
            sys.exit(0)
        except ClusterJoinError:
            time.sleep(1)
    sys.exit("the Ray head did not accept its own token within 120 s")
if args[:1] == ["stop"]:
    if os.path.exists(pidfile):
        pid = int(open(pidfile).read())
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(60):
                os.killpg(pid, 0)
                time.sleep(0.5)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.remove(pidfile)
    print("Stopped the bench's Ray head.")
    sys.exit(0)
os.execv(REAL, [REAL, *args])
"""


def write_wrappers(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, template in (("cmpnas", CMPNAS_WRAPPER), ("ray", RAY_WRAPPER)):
        path = folder / name
        path.write_text(template.format(python=sys.executable, real=str(VENV_BIN / name), repo=str(REPO)))
        path.chmod(0o755)
    return folder


# -- running a page --------------------------------------------------------------------------------

@dataclass
class CommandResult:
    line: int
    command: str
    status: str  # passed, failed, skipped, refused (as expected), not reached
    rc: int | None = None
    seconds: float | None = None
    reason: str | None = None


@dataclass
class PageResult:
    page: str
    status: str = "fail"
    seconds: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0
    substitutions: dict[str, str] = field(default_factory=dict)
    suffix: dict[str, list[str]] = field(default_factory=dict)
    commands: list[CommandResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    log: str = ""
    error: str | None = None


def page_settings(page: str, workdir: Path, data: dict[str, Path]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(variables the script sets, --set suffix per subcommand) of one page (module rules)."""
    photos = {"PHOTOS": str(data["PHOTOS"])}
    if page == "own-data":
        return {**photos, "MANIFEST": str(data["MANIFEST"])}, {"search": PHOTO_SUFFIX}
    if page == "own-gallery-model":
        gallery_suffix = [value for value in PHOTO_SUFFIX if not value.startswith("gallery.")]
        return ({**photos, **{name: str(data[name]) for name in ("GALLERY_WEIGHTS", "GALLERY_TORCHSCRIPT",
                                                                 "GALLERY_ONNX")}},
                {"search": gallery_suffix})
    if page == "export-and-serve":
        return {**photos, "SERVE_URL": f"http://127.0.0.1:{free_port()}",
                "MLFLOW_SERVE_URL": f"http://127.0.0.1:{free_port()}"}, {"search": SERVE_SUFFIX}
    if page == "cluster":
        return ({"MLFLOW_URI": f"http://127.0.0.1:{free_port()}", "SHARED": str(workdir / "shared" / "cmpnas"),
                 "RAY_HEAD": f"127.0.0.1:{data['RAY_PORT']}"},
                {"search": CLUSTER_SUFFIX, "gallery train": CLUSTER_SUFFIX})
    raise ValueError(f"no settings for page {page!r}: add them to bench/howto_check.py")


def page_script(commands: list[Command], variables: dict[str, str], status_file: Path) -> tuple[str, set[str]]:
    """The bash script of a page (module rules) and the variables it substituted."""
    lines = [
        "__howto_begin() { printf '\\n::howto-begin %s\\n' \"$1\"; __howto_t=$(date +%s.%N); }",
        "__howto_end() {",
        "  local rc=$2 expect=$3",
        "  echo \"$1 $rc $__howto_t $(date +%s.%N)\" >> " + shlex.quote(str(status_file)),
        "  printf '::howto-end %s rc=%s\\n' \"$1\" \"$rc\"",
        "  if [ \"$expect\" = fail ]; then [ \"$rc\" -ne 0 ]; else [ \"$rc\" -eq 0 ]; fi",
        "}",
    ]
    used = set()
    for number, command in enumerate(commands):
        if command.skip:
            lines.append(f"echo '::howto-skipped {number}'")
            continue
        text = command.text
        match = EXPORT.match(text)
        if match and match.group(1) in variables and "\n" not in text:
            name = match.group(1)
            text = f"export {name}={shlex.quote(variables[name])}"
            used.add(name)
        lines += [f"__howto_begin {number}", text,
                  f"__howto_end {number} $? {'fail' if command.refused else 'pass'} || exit 100"]
    return "\n".join(lines) + "\n", used


def run_page(path: Path, workdir: Path, data: dict[str, Path], wrappers: Path) -> PageResult:
    page = path.stem
    result = PageResult(page)
    folder = workdir / page
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "home").mkdir(parents=True)
    commands = page_commands(path.read_text())
    variables, suffix = page_settings(page, workdir, data)
    result.substitutions, result.suffix = variables, suffix
    status_file = folder / "status.txt"
    script, used = page_script(commands, variables, status_file)
    missing = sorted(set(variables) - used)
    result.skipped = [f"line {c.line}: {c.first_line.strip()} ({c.skip})" for c in commands if c.skip]
    if missing:
        result.error = f"the page no longer exports {missing}: update bench/howto_check.py or the page"
        return result
    (folder / "page.sh").write_text(script)
    ray_tmp = Path(tempfile.mkdtemp(prefix="howto-ray-", dir="/tmp"))
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("RAY_", "MLFLOW_")) and name not in ("HOWTO_SUFFIX", "VIRTUAL_ENV")}
    env.update({
        "HOME": str(folder / "home"), "PATH": f"{wrappers}:{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "HOWTO_SUFFIX": json.dumps(suffix), "HOWTO_RAY_PIDFILE": str(folder / "ray-head.pid"),
        "HOWTO_RAY_PORT": str(data["RAY_PORT"]),
        "HOWTO_RAY_AGENT_PORT": str(free_port()), "HOWTO_RAY_TMP": str(ray_tmp),
        "HOWTO_RAY_LOG": str(folder / "ray-head.log"), "PYTHONUNBUFFERED": "1",
    })
    result.load_before = os.getloadavg()[0]
    started = time.perf_counter()
    log_path = folder / "page.log"
    with open(log_path, "w") as log:
        shell = subprocess.Popen(["bash", str(folder / "page.sh")], cwd=folder, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = shell.wait(timeout=PAGE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
            result.error = f"the page did not finish within {PAGE_TIMEOUT_S} s"
    pidfile = folder / "ray-head.pid"
    if pidfile.exists():  # the page failed before its `ray stop`
        _end_process_group(int(pidfile.read_text()))
    _end_process_group(shell.pid)  # background commands of the page (the MLflow server)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    result.seconds = round(time.perf_counter() - started, 1)
    result.load_after = os.getloadavg()[0]
    ended = {}
    if status_file.exists():
        for row in status_file.read_text().split("\n"):
            if row.strip():
                number, code, begin, end = row.split()
                ended[int(number)] = (int(code), float(end) - float(begin))
    for number, command in enumerate(commands):
        entry = CommandResult(command.line, _shown(command), "not reached")
        if command.skip:
            entry.status, entry.reason = "skipped", command.skip
        elif number in ended:
            entry.rc, seconds = ended[number]
            entry.seconds = round(seconds, 1)
            if command.refused:
                entry.status, entry.reason = ("refused as expected" if entry.rc else "failed"), command.refused
            else:
                entry.status = "passed" if entry.rc == 0 else "failed"
        else:
            entry.status = "not reached"
        result.commands.append(entry)
    result.status = "pass" if rc == 0 and all(c.status != "failed" and c.status != "not reached"
                                              for c in result.commands) else "fail"
    text = log_path.read_text(errors="replace")
    result.log = str(log_path)
    if result.status == "fail" and result.error is None:
        result.error = text[-3000:]
    return result


def _end_process_group(pgid: int) -> None:
    """SIGTERM to a process group this script started, SIGKILL after 30 s; never anything else."""
    try:
        os.killpg(pgid, signal.SIGTERM)
        for _ in range(60):
            os.killpg(pgid, 0)
            time.sleep(0.5)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _shown(command: Command) -> str:
    lines = command.text.splitlines()
    text = " ".join(line.strip().rstrip("\\").strip() for line in lines[: 1 if HEREDOC.search(lines[0]) else None])
    return text if len(text) <= 200 else text[:197] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--page", action="append", default=None, help="run only these pages (file stems)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="cmpnas-howto-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    photos = write_photos(workdir / "data" / "photos")
    data = {"PHOTOS": photos, "MANIFEST": write_manifest(photos, workdir / "data" / "photos.csv"),
            **write_gallery_models(workdir / "data" / "models"), "RAY_PORT": free_port()}
    wrappers = write_wrappers(workdir / "bin")
    pages = sorted(HOWTO.glob("*.md"))
    if args.page:
        pages = [page for page in pages if page.stem in args.page]
    results = []
    for page in pages:
        print(f"== {page.name} (load {os.getloadavg()[0]:.2f})", flush=True)
        outcome = run_page(page, workdir, data, wrappers)
        results.append(outcome)
        for entry in outcome.commands:
            shown = f"{entry.seconds:>7.1f}s" if entry.seconds is not None else " " * 8
            print(f"   {entry.status:<20} {shown}  line {entry.line}: {entry.command[:100]}", flush=True)
        print(f"   -> {outcome.status} in {outcome.seconds:.0f} s", flush=True)
        if outcome.error:
            print(outcome.error[-1500:], flush=True)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.perf_counter() - started, 1), "workdir": str(workdir),
        "pages": {outcome.page: asdict(outcome) for outcome in results},
        "summary": {outcome.page: outcome.status for outcome in results},
    }
    if args.page and args.results.exists():  # a partial run updates its pages only
        previous = json.loads(args.results.read_text())
        record["pages"] = {**previous.get("pages", {}), **record["pages"]}
        record["summary"] = {**previous.get("summary", {}), **record["summary"]}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=2))
    print(json.dumps(record["summary"]))
    sys.exit(0 if all(outcome.status == "pass" for outcome in results) else 1)


if __name__ == "__main__":
    main()

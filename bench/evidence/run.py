"""The evidence benchmark (issue 28): each recipe of a pre-registered protocol is its own invocation,
cached and resumable in a work folder, so the whole runs in the background over several sessions.

    python bench/evidence/run.py paragon --protocol bench/protocols/fashion_mnist_v1.yaml
    python bench/evidence/run.py paragon --alternative resnet10t   # the protocol's alternatives
    python bench/evidence/run.py budgets   # the budgets and each one's fixed architecture
    python bench/evidence/run.py cmpnas --budget paragon/80 --seed 0   # one run of one method
    python bench/evidence/run.py random|fixed_bct|independent --budget paragon/80 --seed 0
    python bench/evidence/run.py latency   # the paragon and every finished run, timed in one invocation
    python bench/evidence/run.py table     # bench/results/<protocol>.json, docs/benchmarks.md, the plot
    python bench/evidence/run.py status

Recipes: ``paragon`` (the protocol's gallery model, or one of its alternatives); the methods
(``methods.py``: one invocation per method, budget and seed, finished runs never run again);
``latency`` (``timing.py``); ``table`` (``table.py``). Every recipe refuses a protocol file that is
not committed as it is, and a work folder that holds another protocol's runs (``protocol.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

import torch  # noqa: E402

from budgets import Budget, fixed_architecture, protocol_budgets  # noqa: E402
from measure import HeldOut  # noqa: E402
from methods import METHODS, RunInputs, RunKey, finished_result, run_fixed_method, run_search_method  # noqa: E402
from paragon_inputs import held_out_gallery, paragon_folder, search_checkpoint, selection_embeddings  # noqa: E402
from search_config import SEARCH_METHODS, method_config_tree, write_method_config  # noqa: E402
from table import write_table  # noqa: E402
from timing import protocol_latency_settings, time_everything  # noqa: E402
from paragon import measure_paragon, paragon_recipe, train_paragon  # noqa: E402
from protocol import ProtocolError, load_protocol, protocol_workdir  # noqa: E402
from splits import protocol_data  # noqa: E402
from search_space.errors import CmpnasError  # noqa: E402
from workers.storage.durable_write import write_text_durably  # noqa: E402
from workers.training.preprocess import pick_device  # noqa: E402

DEFAULT_PROTOCOL = HERE.parent / "protocols" / "fashion_mnist_v1.yaml"
DEFAULT_WORKDIR = Path("~/.cache/cmpnas/evidence")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_paragon(args: argparse.Namespace) -> None:
    protocol = load_protocol(args.protocol)
    folder = protocol_workdir(args.workdir, protocol)
    section = protocol.section("paragon")
    alternatives = {entry["backbone"]: entry for entry in section.get("alternatives", [])}
    if args.alternative is not None and args.alternative not in alternatives:
        raise ProtocolError(f"--alternative {args.alternative!r} is not among the protocol's paragon.alternatives "
                            f"{sorted(alternatives)}")
    chosen = alternatives.get(args.alternative, {})
    recipe = paragon_recipe(section, chosen.get("backbone"), chosen.get("stem_stride"))
    data = protocol_data(protocol.section("data"), args.data_root)
    log(f"{recipe.name}: {len(data.selection.train)} training images, validation "
        f"{len(data.selection.query) + len(data.selection.gallery)}, held out {len(data.held_out)} (leave-one-out)")
    device = pick_device()
    recipe_folder = folder / "paragon" / recipe.name
    checkpoint = train_paragon(recipe, data, recipe_folder, device, log)
    result = measure_paragon(checkpoint, data, protocol, device)
    write_text_durably(recipe_folder / "result.json", json.dumps(result, indent=2) + "\n")
    figures = result["held_out_leave_one_out"]["r1"]
    log(f"{recipe.name}: test accuracy {result['test_accuracy']:.2f} %, leave-one-out R@1 {figures['estimate']:.2f} "
        f"[{figures['low']:.2f}, {figures['high']:.2f}], {result['mflops']:.2f} MFLOPs; {recipe_folder / 'result.json'}")


def run_budgets(args: argparse.Namespace) -> None:
    """The protocol's budgets and each one's fixed architecture (decided before any query model trains)."""
    protocol = load_protocol(args.protocol)
    grid, embed_dim = protocol.section("methods")["fixed_bct"], int(protocol.section("paragon")["embed_dim"])
    for budget in protocol_budgets(protocol.spec, log):
        fixed = fixed_architecture(budget.mflops, grid, embed_dim)
        shown = "none fits" if fixed is None else (f"{fixed.backbone} stem stride {fixed.stem_stride} at "
                                                   f"{fixed.resolution} px, {fixed.mflops:.3f} MFLOPs")
        print(f"{budget.name}: {budget.mflops:.3f} MFLOPs ({budget.cost_reduction:.1f}x); fixed: {shown}")


def protocol_budget(protocol, name: str) -> Budget:
    budgets = {budget.name: budget for budget in protocol_budgets(protocol.spec, lambda _message: None)}
    if name not in budgets:
        raise ProtocolError(f"--budget {name!r} is not a budget of {protocol.name}; its budgets: {sorted(budgets)} "
                            "(`run.py budgets` shows them)")
    return budgets[name]


def run_method(args: argparse.Namespace) -> None:
    """One run of ``args.command`` at ``--budget`` with ``--seed`` (``methods.py``); a finished one is not rerun."""
    protocol = load_protocol(args.protocol)
    workdir = protocol_workdir(args.workdir, protocol)
    if args.seed not in protocol.spec["seeds"]:
        raise ProtocolError(f"--seed {args.seed} is not among the protocol's seeds {protocol.spec['seeds']}")
    key = RunKey(args.command, protocol_budget(protocol, args.budget), args.seed)
    done = finished_result(key.folder(workdir))
    if done is not None:
        log(f"{key.method} {key.budget.name} seed {key.seed}: finished already (held-out R@1 "
            f"{done['held_out_leave_one_out']['r1']:.2f}); {key.folder(workdir) / 'result.json'}")
        return
    folder = paragon_folder(workdir, protocol.spec)
    data = protocol_data(protocol.section("data"), args.data_root)
    device = pick_device()
    held_out = HeldOut(data.held_out, held_out_gallery(folder, data, device), data.selection.mean,
                       data.selection.std)
    inputs = RunInputs(protocol, workdir, data, folder, held_out, device)
    if key.method in SEARCH_METHODS:
        tree = method_config_tree(protocol, key.method, key.budget.mflops, key.seed, key.folder(workdir),
                                  folder / "gallery_search.safetensors")
        config = write_method_config(tree, key.folder(workdir) / "config.yaml")
        result = run_search_method(key, inputs, search_checkpoint(folder, config, data), log)
    else:
        fixed = fixed_architecture(key.budget.mflops, protocol.section("methods")["fixed_bct"],
                                   int(protocol.section("paragon")["embed_dim"]))
        if fixed is None:
            raise ProtocolError(f"no configuration of methods.fixed_bct fits {key.budget.name}: no row there")
        result = run_fixed_method(key, inputs, fixed, selection_embeddings(folder, data, device), log)
    log(f"{key.method} {key.budget.name} seed {key.seed}: held-out R@1 {result['held_out_leave_one_out']['r1']:.2f}, "
        f"{result['mflops']:.3f} MFLOPs; {key.folder(workdir) / 'result.json'}")


def run_latency(args: argparse.Namespace) -> None:
    protocol = load_protocol(args.protocol)
    workdir = protocol_workdir(args.workdir, protocol)
    time_everything(workdir, paragon_folder(workdir, protocol.spec),
                    protocol_latency_settings(protocol.section("cost")), log)


def run_table(args: argparse.Namespace) -> None:
    protocol = load_protocol(args.protocol)
    workdir = protocol_workdir(args.workdir, protocol)
    written = write_table(protocol, workdir, args.results, args.docs, log)
    log("wrote " + ", ".join(str(path) for path in written))


def run_status(args: argparse.Namespace) -> None:
    protocol = load_protocol(args.protocol)
    folder = protocol_workdir(args.workdir, protocol)
    for recipe_folder in sorted((folder / "paragon").glob("*")):
        epochs = (recipe_folder / "epochs.jsonl").read_text().splitlines() if (recipe_folder / "epochs.jsonl").exists() else []
        done = (recipe_folder / "result.json").exists()
        print(f"paragon {recipe_folder.name}: {'measured' if done else f'{len(epochs)} epoch lines'}")
    for result_path in sorted((folder / "runs").glob("*/*/seed*/result.json")):
        result = json.loads(result_path.read_text())
        print(f"{result['method']} {result['budget']} seed {result['seed']}: held-out R@1 "
              f"{result['held_out_leave_one_out']['r1']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST folder; default: the standard places")
    commands = parser.add_subparsers(dest="command", required=True)
    paragon = commands.add_parser("paragon", help="train (or continue) and measure the paragon")
    paragon.add_argument("--alternative", default=None, help="a backbone of paragon.alternatives instead")
    paragon.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    commands.add_parser("budgets", help="the protocol's budgets and their fixed architectures")
    for method in METHODS:
        recipe = commands.add_parser(method, help=f"one run of {method} (methods.py), resumed if unfinished")
        recipe.add_argument("--budget", required=True, help="a budget's name, as `budgets` prints it: paragon/80")
        recipe.add_argument("--seed", type=int, required=True, help="one of the protocol's seeds")
        recipe.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    commands.add_parser("latency", help="time the paragon and every finished run in one invocation")
    table = commands.add_parser("table", help="the results JSON, the docs table and the plot")
    table.add_argument("--results", type=Path, default=HERE.parent / "results", help="folder of <protocol>.json")
    table.add_argument("--docs", type=Path, default=HERE.parents[1] / "docs" / "benchmarks.md")
    commands.add_parser("status", help="what the work folder holds")
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    handlers = {"paragon": run_paragon, "budgets": run_budgets, "status": run_status, "latency": run_latency,
                "table": run_table, **dict.fromkeys(METHODS, run_method)}
    try:
        handlers[args.command](args)
    except (ProtocolError, CmpnasError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

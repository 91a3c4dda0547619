"""The evidence benchmark (issue 28): each recipe of a pre-registered protocol is its own invocation,
cached and resumable in a work folder, so the whole runs in the background over several sessions.

    python bench/evidence/run.py paragon --protocol bench/protocols/fashion_mnist_v1.yaml
    python bench/evidence/run.py paragon --alternative resnet10t   # the protocol's alternatives
    python bench/evidence/run.py budgets   # the budgets and each one's fixed architecture
    python bench/evidence/run.py status

Recipes so far: ``paragon`` (the protocol's gallery model, or one of its alternatives); the methods'
recipes (cmpnas, random, fixed_bct, independent), latency and the table follow the protocol as they
land. Every recipe refuses a protocol file that is not committed as it is, and a work folder that
holds another protocol's runs (``protocol.py``).
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

from budgets import fixed_architecture, protocol_budgets  # noqa: E402
from paragon import measure_paragon, paragon_recipe, train_paragon  # noqa: E402
from protocol import ProtocolError, load_protocol, protocol_workdir  # noqa: E402
from splits import protocol_data  # noqa: E402
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


def run_status(args: argparse.Namespace) -> None:
    protocol = load_protocol(args.protocol)
    folder = protocol_workdir(args.workdir, protocol)
    for recipe_folder in sorted((folder / "paragon").glob("*")):
        epochs = (recipe_folder / "epochs.jsonl").read_text().splitlines() if (recipe_folder / "epochs.jsonl").exists() else []
        done = (recipe_folder / "result.json").exists()
        print(f"paragon {recipe_folder.name}: {'measured' if done else f'{len(epochs)} epoch lines'}")


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
    commands.add_parser("status", help="what the work folder holds")
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        {"paragon": run_paragon, "budgets": run_budgets, "status": run_status}[args.command](args)
    except ProtocolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

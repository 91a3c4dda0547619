"""The table of a protocol: every run of its work folder read back, aggregated as the protocol says,
and written to ``bench/results/<protocol>.json``, a generated block of ``docs/benchmarks.md`` and a plot.

Rules:
* one protocol per table: every run's ``result.json`` must name the protocol file's SHA-256, and an
  existing ``bench/results/<protocol>.json`` of another digest (an edited protocol) is refused:
  rows of two protocols are never mixed;
* every cell of the protocol (method x budget) is shown; a cell without a finished run is "not
  run", and a cell missing some seeds says which ran. Every finished run counts;
* a cell's held-out R@1 (and mAP, R@5) is the mean over its seeds of each seed's leave-one-out mean,
  with the protocol's hierarchical bootstrap interval over seeds and queries
  (``evaluators.intervals``); the search gain per budget is cmpnas minus random with the paired
  interval (one query draw for both);
* cost x is the paragon's MFLOPs over the model's (mean over seeds), also against the cheapest
  paragon alternative within ``paragon.alternatives_margin`` of its validation accuracy when those
  are measured; latency x uses ``latency.json`` only (every model and the paragon timed in one
  invocation), else "not run";
* the targets are stated as met, missed, or not run, from the protocol's ``headline`` and ``targets``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from evaluators.intervals import BootstrapSettings, mean_interval, paired_difference_interval

from budgets import architecture_mflops, protocol_budgets
from measure import read_outcomes
from protocol import Protocol, ProtocolError, code_commit

METHODS = ("cmpnas", "random", "fixed_bct", "independent")
NOT_RUN = "not run"
MARK = "evidence-table {name}"


def read_runs(protocol: Protocol, workdir: Path) -> list[dict]:
    """Every finished run of the work folder, refused if one followed another protocol file."""
    runs = []
    for path in sorted((workdir / "runs").glob("*/*/seed*/result.json")):
        result = json.loads(path.read_text())
        if result.get("protocol_sha256") != protocol.digest:
            raise ProtocolError(f"{path} is a run of {result.get('protocol')} (sha256 "
                                f"{str(result.get('protocol_sha256'))[:12]}), not of {protocol.name} (sha256 "
                                f"{protocol.digest[:12]}): rows of two protocols are never mixed")
        runs.append({**result, "folder": path.parent})
    return runs


def _interval(values: list[np.ndarray], settings: BootstrapSettings) -> dict:
    return mean_interval(values, settings).as_dict()


def _paragon(protocol: Protocol, workdir: Path) -> dict:
    """The paragon's measured figures (or its architecture's MFLOPs alone), and the cheapest alternative."""
    section = protocol.spec["paragon"]
    name = f"{section['backbone']}-s{int(section['stem_stride'])}"
    measured = {}
    for path in sorted((workdir / "paragon").glob("*/result.json")):
        measured[path.parent.name] = json.loads(path.read_text())
    paragon = measured.get(name)
    mflops = paragon["mflops"] if paragon else architecture_mflops(section["backbone"], int(section["stem_stride"]),
                                                                   28, int(section["embed_dim"]))
    cheapest = None
    if paragon:
        margin = float(section.get("alternatives_margin", 0.5))
        close = [result for result in measured.values()
                 if result["validation_accuracy"] >= paragon["validation_accuracy"] - margin]
        cheapest = min(close, key=lambda result: result["mflops"])
    return {"name": name, "measured": paragon, "mflops": mflops, "cheapest_within_margin": cheapest,
            "alternatives_measured": sorted(set(measured) - {name})}


def _cell(runs: list[dict], seeds: list[int], settings: BootstrapSettings, paragon: dict, latency: dict | None) -> dict:
    if not runs:
        return {"status": NOT_RUN, "seeds_run": [], "seeds_missing": seeds}
    runs = sorted(runs, key=lambda run: run["seed"])
    outcomes = [read_outcomes(run["folder"]) for run in runs]
    hits = {k: [100.0 * (item["first_relevant_rank"] <= k) for item in outcomes] for k in (1, 5)}
    mflops = float(np.mean([run["mflops"] for run in runs]))
    cheapest = paragon["cheapest_within_margin"]
    timed = [latency["runs_ms"].get(str(run["folder"].relative_to(run["folder"].parents[3])))
             for run in runs] if latency else [None]
    per_seed = [{key: run[key] for key in ("seed", "mflops", "params", "architecture", "runs", "code_commit",
                                           "finished")} | {"held_out_leave_one_out": run["held_out_leave_one_out"]}
                for run in runs]
    return {"status": "complete" if len(runs) == len(seeds) else "partial",
            "seeds_run": [run["seed"] for run in runs],
            "seeds_missing": sorted(set(seeds) - {run["seed"] for run in runs}),
            "r1": _interval(hits[1], settings), "r5": _interval(hits[5], settings),
            "map": _interval([100.0 * item["average_precision"] for item in outcomes], settings),
            "mflops": mflops, "params": float(np.mean([run["params"] for run in runs])),
            "cost_x": paragon["mflops"] / mflops,
            "cost_x_cheapest": cheapest["mflops"] / mflops if cheapest else None,
            "latency_x": (latency["paragon_ms"] / float(np.mean(timed))
                          if latency and all(value is not None for value in timed) else None),
            "per_seed": per_seed}


def _search_gain(cells: dict, budget: str, settings: BootstrapSettings, runs: list[dict]) -> dict:
    first = [run for run in runs if run["method"] == "cmpnas" and run["budget"] == budget]
    second = [run for run in runs if run["method"] == "random" and run["budget"] == budget]
    if not first or not second:
        return {"status": NOT_RUN}
    hits = [[100.0 * (read_outcomes(run["folder"])["first_relevant_rank"] <= 1) for run in group]
            for group in (first, second)]
    interval = paired_difference_interval(hits[0], hits[1], settings)
    return {"status": "complete" if all(cells[(method, budget)]["status"] == "complete"
                                        for method in ("cmpnas", "random")) else "partial",
            **interval.as_dict(), "excludes_zero": interval.excludes_zero()}


def _targets(protocol: Protocol, cells: dict, gains: dict, paragon: dict) -> dict:
    spec = protocol.spec
    headline = spec["headline"]
    budget = f"paragon/{headline['paragon_divisor']}"
    cell = cells.get((headline["method"], budget), {"status": NOT_RUN})
    gap_target = spec["targets"]["gap"]
    gap = {"row": f"{headline['method']} at {budget}", "max_gap_points": gap_target["max_gap_points"]}
    if cell["status"] == NOT_RUN or not paragon["measured"]:
        gap["verdict"] = NOT_RUN
    else:
        value = paragon["measured"]["held_out_leave_one_out"]["r1"]["estimate"] - cell["r1"]["estimate"]
        met = value <= gap_target["max_gap_points"] and cell["cost_x"] >= gap_target["min_cost_reduction"]
        gap.update(gap_points=value, cost_x=cell["cost_x"],
                   verdict=("met" if met else "missed") + ("" if cell["status"] == "complete" else
                                                            f" (so far: seeds {cell['seeds_run']})"))
    needed = int(spec["targets"]["search_gain"]["min_budgets"])
    excluding = [name for name, gain in gains.items() if gain.get("excludes_zero") and gain["low"] > 0]
    ran = [name for name, gain in gains.items() if gain["status"] != NOT_RUN]
    gain = {"min_budgets": needed, "budgets_above_zero": excluding,
            "verdict": "met" if len(excluding) >= needed else (NOT_RUN if not ran else "missed")}
    return {"gap": gap, "search_gain": gain}


def build_table(protocol: Protocol, workdir: Path) -> dict:
    """The table's record (module rules), from the work folder alone."""
    intervals = protocol.spec["intervals"]
    settings = BootstrapSettings(replicates=int(intervals["replicates"]), level=float(intervals["level"]))
    runs = read_runs(protocol, workdir)
    paragon = _paragon(protocol, workdir)
    latency_path = workdir / "latency.json"
    latency = json.loads(latency_path.read_text()) if latency_path.exists() else None
    budgets = protocol_budgets(protocol.spec, lambda _message: None)
    seeds = list(protocol.spec["seeds"])
    cells = {(method, budget.name): _cell([run for run in runs if run["method"] == method
                                           and run["budget"] == budget.name], seeds, settings, paragon, latency)
             for method in METHODS for budget in budgets}
    gains = {budget.name: _search_gain(cells, budget.name, settings, runs) for budget in budgets}
    return {**protocol.identity(), "code_commit": code_commit(),
            "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "paragon": paragon, "latency": latency, "seeds": seeds,
            "budgets": [{"name": budget.name, "mflops": budget.mflops, "cost_reduction": budget.cost_reduction}
                        for budget in budgets],
            "cells": [{"method": method, "budget": budget, **cell} for (method, budget), cell in cells.items()],
            "search_gain": gains, "targets": _targets(protocol, cells, gains, paragon)}


def _shown(interval: dict | None, digits: int = 2) -> str:
    if not interval:
        return NOT_RUN
    return f"{interval['estimate']:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"


def _ratio(value: float | None) -> str:
    return NOT_RUN if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def markdown(table: dict) -> str:
    """The generated block of docs/benchmarks.md."""
    paragon, measured = table["paragon"], table["paragon"]["measured"]
    lines = [f"Generated by `bench/evidence/run.py table` on {table['generated']} from protocol "
             f"`{table['protocol']}` (commit `{table['protocol_commit'][:12]}`, code `{table['code_commit'][:12]}`).", ""]
    if measured:
        r1 = measured["held_out_leave_one_out"]["r1"]
        lines.append(f"Paragon {paragon['name']}: test accuracy {measured['test_accuracy']:.2f} % (target >= "
                     f"93.5), leave-one-out R@1 {_shown(r1)}, {paragon['mflops']:.2f} MFLOPs, "
                     f"trained on {measured['trained'].get('machine', {}).get('gpu') or 'CPU'}.")
    else:
        lines.append(f"Paragon {paragon['name']}: {NOT_RUN} ({paragon['mflops']:.2f} MFLOPs by its architecture).")
    latency = table["latency"]
    lines.append(f"Latency: {latency['method']}, {latency['measured']} on {latency['machine']['host']}; paragon "
                 f"{latency['paragon_ms']:.3f} ms." if latency else f"Latency: {NOT_RUN} (`run.py latency`).")
    lines += ["", "| method | budget | seeds | held-out R@1 [95 % CI] | mAP | MFLOPs | cost x | cost x (cheapest "
              "alt.) | latency x | search gain (cmpnas - random) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in table["cells"]:
        gain = table["search_gain"][cell["budget"]] if cell["method"] == "cmpnas" else None
        gain_text = "" if gain is None else (_shown(gain) if gain["status"] != NOT_RUN else NOT_RUN)
        if cell["status"] == NOT_RUN:
            lines.append(f"| {cell['method']} | {cell['budget']} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | "
                         f"{NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {gain_text} |")
            continue
        seeds = ", ".join(map(str, cell["seeds_run"])) + (f" (missing {cell['seeds_missing']})"
                                                          if cell["seeds_missing"] else "")
        lines.append(f"| {cell['method']} | {cell['budget']} | {seeds} | {_shown(cell['r1'])} | {_shown(cell['map'])} "
                     f"| {cell['mflops']:.3f} | {_ratio(cell['cost_x'])} | {_ratio(cell['cost_x_cheapest'])} | "
                     f"{_ratio(cell['latency_x'])} | {gain_text} |")
    targets = table["targets"]
    gap = targets["gap"]
    lines += ["", f"Target, {gap['row']} within {gap['max_gap_points']} R@1 of the paragon: **{gap['verdict']}**"
              + (f" (gap {gap['gap_points']:.2f} points at {gap['cost_x']:.1f}x)" if "gap_points" in gap else "") + ".",
              f"Target, a search gain whose interval excludes 0 at {targets['search_gain']['min_budgets']} or more "
              f"budgets: **{targets['search_gain']['verdict']}** (above zero at: "
              f"{', '.join(targets['search_gain']['budgets_above_zero']) or 'none'})."]
    return "\n".join(lines) + "\n"


def replace_block(document: str, name: str, block: str) -> str:
    """``document`` with its generated block of protocol ``name`` replaced (inserted before the appendix,
    or at the end, the first time)."""
    start, end = f"<!-- {MARK.format(name=name)}: start -->", f"<!-- {MARK.format(name=name)}: end -->"
    generated = f"{start}\n{block}{end}\n"
    if start in document and end in document:
        before, rest = document.split(start, 1)
        return before + generated + rest.split(end, 1)[1].lstrip("\n")
    appendix = "## Appendix: Earlier runs"
    if appendix in document:
        before, after = document.split(appendix, 1)
        return before + generated + "\n" + appendix + after
    return document.rstrip("\n") + "\n\n" + generated


def plot(table: dict, path: Path) -> Path | None:
    """Held-out R@1 against cost reduction (log axis), a line per method with interval bars, the paragon
    as a horizontal line; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        cells = sorted((cell for cell in table["cells"] if cell["method"] == method and cell["status"] != NOT_RUN),
                       key=lambda cell: cell["cost_x"])
        if cells:
            r1 = [cell["r1"] for cell in cells]
            axes.errorbar([cell["cost_x"] for cell in cells], [item["estimate"] for item in r1],
                          yerr=[[item["estimate"] - item["low"] for item in r1],
                                [item["high"] - item["estimate"] for item in r1]], marker="o", capsize=3, label=method)
    measured = table["paragon"]["measured"]
    if measured:
        axes.axhline(measured["held_out_leave_one_out"]["r1"]["estimate"], color="black", linestyle="--",
                     label=f"paragon {table['paragon']['name']}")
    axes.set_xscale("log")
    axes.set_xlabel("cost reduction (paragon MFLOPs / model MFLOPs)")
    axes.set_ylabel("held-out leave-one-out R@1 (%)")
    axes.set_title(f"{table['protocol']}: mean over seeds, 95 % intervals")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_table(protocol: Protocol, workdir: Path, results_dir: Path, docs: Path, log) -> list[Path]:
    """The JSON, the docs block and the plot of ``protocol``'s work folder (module rules)."""
    results_path = results_dir / f"{protocol.name}.json"
    if results_path.exists():
        recorded = json.loads(results_path.read_text()).get("protocol_sha256")
        if recorded != protocol.digest:
            raise ProtocolError(f"{results_path} holds results of another file of {protocol.name} (sha256 "
                                f"{str(recorded)[:12]}, this one {protocol.digest[:12]}): a protocol is never edited "
                                "after its results exist; a changed plan is a new protocol file")
    table = build_table(protocol, workdir)
    results_dir.mkdir(parents=True, exist_ok=True)
    written = [results_path]
    picture = plot(table, results_dir / f"{protocol.name}.png")
    block = markdown(table)
    if picture is not None:
        block += f"\n![held-out R@1 against cost reduction]({os.path.relpath(picture, docs.parent)})\n"
        written.append(picture)
    results_path.write_text(json.dumps(table, indent=2, default=str) + "\n")
    docs.write_text(replace_block(docs.read_text() if docs.exists() else "", protocol.name, block))
    written.append(docs)
    log(f"{sum(cell['status'] != NOT_RUN for cell in table['cells'])} of {len(table['cells'])} cells run")
    return written

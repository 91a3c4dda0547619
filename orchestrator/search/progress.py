"""Live terminal progress of a search (rich), fed by Tune's callback hooks.

Rules:
* one row per trial: status, architecture, epoch, latest cross-model metrics, MFLOPs and the
  compatibility check of its final result (``workers.trial_report.Scoring.verdict``);
* a final result that fails the check also prints one line above the table, once per trial: the
  trial and architecture, the cross-model and homogeneous values compared with the ratio, the
  likely causes and the settings to change.
"""

from __future__ import annotations

import time

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from search_space import ArchSpec
from workers.trial_report import COMPATIBILITY_FAILED, DEFAULT_SCORING, Scoring, is_final_result


class RichProgressCallback(Callback):
    """One line per trial (see the module's rules), judged by the search's ``scoring``."""

    def __init__(self, console: Console, total_trials: int, epochs: int, scoring: Scoring = DEFAULT_SCORING):
        self.console = console
        self.total_trials = total_trials
        self.epochs = epochs
        self.scoring = scoring
        self.rows: dict[str, dict[str, str]] = {}
        self.compatibility_failures_printed: set[str] = set()
        self.started = time.monotonic()
        self.live: Live | None = None

    # Tune pickles its callbacks with the experiment state; a terminal handle cannot travel.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "console": None, "live": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.console = Console()

    def setup(self, **info):
        self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
        self.live.start()

    def _update(self, trial, **fields: str) -> None:
        row = self.rows.setdefault(
            trial.trial_id,
            {"status": "", "arch": ArchSpec.from_json(trial.config["arch"]).arch_id, "epoch": "", "cross_r1": "",
             "cross_map": "", "mflops": "", "compatibility": ""},
        )
        row.update(fields)
        if self.live is not None:
            self.live.update(self._render())

    def on_trial_start(self, iteration, trials, trial, **info):
        self._update(trial, status="running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        fields = {"epoch": f"{result.get('epoch', '?')}/{self.epochs}",
                  "cross_r1": f"{result.get('cross_r1', float('nan')):.2f}",
                  "cross_map": f"{result.get('cross_map', float('nan')):.2f}"}
        if "mflops" in result:
            fields["mflops"] = f"{result['mflops']:.2f}"
        verdict = self.scoring.verdict(result)
        if verdict is not None:
            fields["compatibility"] = verdict
        self._update(trial, **fields)
        if verdict == COMPATIBILITY_FAILED and trial.trial_id not in self.compatibility_failures_printed:
            self.compatibility_failures_printed.add(trial.trial_id)
            self.console.print(self.compatibility_failure_line(trial.trial_id, self.rows[trial.trial_id]["arch"],
                                                               result), highlight=False)

    def compatibility_failure_line(self, trial_id: str, arch_id: str, result: dict) -> str:
        """The line printed for a final result that fails the compatibility check (rich markup)."""
        return (f"[bold red]compatibility check failed[/]: trial {escape(trial_id)} ({escape(arch_id)}): "
                + escape(self.scoring.describe_failure(result)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trial, status="done" if is_final_result(trial.last_result) else "stopped early")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trial, status="failed")

    def on_experiment_end(self, trials, **info):
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None

    def _render(self) -> Table:
        done = sum(row["status"] in ("done", "stopped early") for row in self.rows.values())
        elapsed = time.monotonic() - self.started
        table = Table(title=f"cmpnas search: {done}/{self.total_trials} candidates done, {elapsed:.0f}s")
        for column in ("trial", "status", "arch", "epoch", "cross R@1", "cross mAP", "MFLOPs", "compatibility"):
            table.add_column(column)
        for trial_id, row in self.rows.items():
            compatibility = row.get("compatibility", "")
            table.add_row(trial_id, row["status"], row["arch"], row["epoch"], row["cross_r1"], row["cross_map"],
                          row["mflops"], f"[red]{compatibility}[/]" if compatibility == COMPATIBILITY_FAILED
                          else compatibility)
        return table

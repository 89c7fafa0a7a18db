"""A live progress bar for a person at a terminal, in the parent only (not the watchdog's Activity).

tqdm draws it on stderr: files done (and, once the walk has finished and the total is known, a bar and an
ETA), the file rate, and the counts that matter. Log lines are routed through `tqdm.write` meanwhile
(logs.route_lines), so they print above the bar instead of through it. By default nothing at all is drawn
unless both stdout and stderr are terminals: journald, pipes and files get the log stream alone.
"""

from __future__ import annotations

import sys

from obsbatch import logs
from obsbatch.models import Outcome
from obsbatch.report import Summary


class ProgressBar:
    """summary: a report.Summary, or anything with its `observers` list and `progress_line()` (the restore's)."""

    def __init__(self, summary: Summary, enabled: bool):
        self.summary = summary
        self.enabled = enabled
        self._bar = None

    @classmethod
    def for_terminal(cls, summary: Summary, output) -> "ProgressBar":
        """Drawn as `output` (config.OutputConfig) says: --progress, --no-progress, -q, else when stdout and
        stderr are both terminals."""
        return cls(summary, enabled=output.bar(sys.stderr.isatty() and sys.stdout.isatty()))

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no extra monitor thread: updates come from the main thread only
            self._bar = tqdm(total=None, unit="file", file=sys.stderr, dynamic_ncols=True, mininterval=0.25,
                             desc="obsbatch", leave=True)
            logs.route_lines(lambda line: tqdm.write(line, file=sys.stderr))
            self.summary.observers.append(self.record)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            logs.route_lines(None)
            self._bar.refresh()
            self._bar.close()
            self._bar = None

    def record(self, outcome: Outcome) -> None:
        self._bar.set_postfix_str(self.summary.progress_line(), refresh=False)
        self._bar.update(1)

    def walk_done(self, total: int) -> None:
        """The walk has ended: the total is known, so tqdm can draw a bar and an ETA."""
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

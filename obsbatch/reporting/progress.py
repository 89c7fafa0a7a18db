"""A live progress bar for a person at a terminal, in the parent only (not the watchdog's Activity).

tqdm draws it on stderr: bytes done (and, once the walk or the listing has ended and the total is known, a bar
and an ETA), the byte rate, and the counts that matter. Bytes, not files (issue #18): one large file is most
of a run's time, and an ETA from file counts would be wrong by as much. Log lines are routed through `tqdm.write` meanwhile
(logs.route_lines), so they print above the bar instead of through it. By default nothing at all is drawn
unless both stdout and stderr are terminals: journald, pipes and files get the log stream alone.
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator

from obsbatch import logs
from obsbatch.models import Outcome
from obsbatch.reporting.summary import Summary


class ProgressBar:
    """summary: a report.Summary, or anything with its `observers` list and `progress_line()` (the restore's)."""

    def __init__(self, summary: Summary, enabled: bool, by_bytes: bool = True):
        self.summary = summary
        self.enabled = enabled
        #: Bytes (uploads, restores, read-backs), or objects (a verify that only sends HEADs: no bytes move).
        self.by_bytes = by_bytes
        self._bar = None

    @classmethod
    def for_terminal(cls, summary: Summary, output, by_bytes: bool = True) -> "ProgressBar":
        """Drawn as `output` (config.OutputConfig) says: --progress, --no-progress, -q, else when stdout and
        stderr are both terminals."""
        return cls(summary, enabled=output.bar(sys.stderr.isatty() and sys.stdout.isatty()), by_bytes=by_bytes)

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no extra monitor thread: updates come from the main thread only
            units = dict(unit="B", unit_scale=True, unit_divisor=1024) if self.by_bytes else dict(unit="object")
            self._bar = tqdm(total=None, file=sys.stderr, dynamic_ncols=True, mininterval=0.25, desc="obsbatch",
                             leave=True, **units)
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
        self._bar.update(outcome.size if self.by_bytes else 1)

    def counted(self, items: Iterable) -> Iterator:
        """Pass the items (each with a `size`) through; when they end, their total is the bar's."""
        total = 0
        for item in items:
            total += item.size if self.by_bytes else 1
            yield item
        self.walk_done(total)

    def walk_done(self, total_bytes: int) -> None:
        """The walk (or a restore's or verify's listing) has ended: the bytes of everything it handed on are
        known, so tqdm can draw a bar and an ETA."""
        if self._bar is not None:
            self._bar.total = total_bytes
            self._bar.refresh()




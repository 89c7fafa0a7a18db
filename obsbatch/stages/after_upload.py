"""Stage 6, in the parent: what follows each Outcome a worker returns.

The journal records a verified upload (and ends the file's deferral); in move mode (--delete-source) the
local file is removed, if it is still exactly the bytes that were verified upstream.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import structlog

from obsbatch.stages.journal import Journal
from obsbatch.models import Kind, Outcome, WorkItem, fingerprint
from obsbatch.stages.stability import Gate

log = structlog.get_logger()


class AfterUpload:
    """journal: the state journal, or None (--no-state). move_gate: the run's Gate in move mode, else None."""

    def __init__(self, journal: Optional[Journal], move_gate: Optional[Gate]):
        self.journal = journal
        self.move_gate = move_gate

    def __call__(self, item: WorkItem, outcome: Outcome) -> Outcome:
        if self.journal is not None:
            self.journal.record(item, outcome)
        if self.move_gate is not None and outcome.kind is Kind.UPLOADED:
            return self._remove_uploaded(item, outcome)
        return outcome

    def _remove_uploaded(self, item: WorkItem, outcome: Outcome) -> Outcome:
        """--delete-source: unlink the file only if it is still exactly the bytes that were verified upstream.

        The name must still lead to the same inode with the same size, mtime and ctime (lstat, so a name now
        pointing elsewhere is left alone), and no process may hold it open for writing per the current fd
        index. What remains is the window between this check and unlink(2): a writer that opens the file in
        it and writes would write into an unlinked inode. obsbatch cannot close that window; --min-age
        narrows it to files nobody has touched for a while.
        """
        try:
            st = os.lstat(item.path)
        except FileNotFoundError:
            return outcome
        if fingerprint(st) != item.fingerprint:
            log.warning("file.kept", path=item.display, detail="changed after its upload; the next run uploads it")
            return outcome
        if self.move_gate.current_index().writers.get((st.st_dev, st.st_ino)):
            log.warning("file.kept", path=item.display, detail="open for writing after its upload; not removed")
            return outcome
        try:
            os.unlink(item.path)
        except OSError as exc:
            log.warning("file.kept", path=item.display, detail=f"cannot remove: {exc.strerror}")
            return outcome
        log.info("file.deleted", path=item.display, key=item.key)
        return dataclasses.replace(outcome, deleted=True)

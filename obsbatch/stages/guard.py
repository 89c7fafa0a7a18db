"""The mass-change guard (--max-changed, issue #20): a run that would change or drop more than PERCENT of
the files the previous snapshot held uploads nothing and writes no snapshot.

That is the shape of ransomware (every file rewritten) or of a wrong mount (the source is an empty mount
point: every file gone). Without the guard, the next snapshot would record the damage as the tree, and an
unversioned bucket would take the damaged bytes over the good ones.

To upload nothing, the decision must come before the first upload, and the files that vanished are known
only once the walk has ended: so while a guard applies, the walk's results are spooled to an unlinked
temporary file (memory stays bounded) and handed on only after the walk, if the figures pass. The guard
applies when there is a previous snapshot of at least MIN_FILES files; a first run, and small trees (where a
handful of edits is a large share), stream as before.
"""

from __future__ import annotations

import pickle
import tempfile
from typing import Callable, Iterable, Iterator

import structlog

from obsbatch.errors import ExitCode, ObsbatchError
from obsbatch.stages.journal import Journal

log = structlog.get_logger()

#: The guard applies only above this many files in the previous snapshot.
MIN_FILES = 100


class MassChange(ObsbatchError):
    """More of the tree changed or vanished in one run than --max-changed allows: nothing was uploaded."""

    exit_code = ExitCode.MASS_CHANGE


def guarded(items: Iterable, journal: Journal, previous_files: int, max_changed: float,
            stopping: Callable[[], bool]) -> Iterator:
    """The items, passed on only after the walk, if no more than `max_changed` percent of the
    `previous_files` changed content or vanished, as the journal knows them (Journal.known_seen and
    known_changed: a file whose size or mtime moved; not one whose ctime alone did, so a `chown -R` or
    `chmod -R` is not taken for an attack; and a file found under a new name with the size, mtime and inode
    of a journaled one, known_moved, is no vanished file, so a renamed directory is not either); MassChange
    otherwise.

    stopping(): a stop signal came; the spool ends there and nothing is passed on.
    """
    with tempfile.TemporaryFile(prefix="obsbatch-spool-") as spool:
        count = 0
        for item in items:
            pickle.dump(item, spool, protocol=pickle.HIGHEST_PROTOCOL)
            count += 1
            if stopping():
                return
        changed, seen = journal.known_changed, journal.known_seen
        vanished = max(0, previous_files - seen - journal.known_moved)
        share = 100.0 * (changed + vanished) / previous_files
        figures = dict(previous_files=previous_files, changed=changed, vanished=vanished, moved=journal.known_moved,
                       share_percent=round(share, 1), max_changed_percent=max_changed)
        if share > max_changed:
            log.error("run.mass_change", **figures,
                      detail="nothing was uploaded and no snapshot written; if the change is meant, run again with "
                             "a higher --max-changed")
            raise MassChange(f"{changed} of the {previous_files} files of the previous snapshot changed and "
                             f"{vanished} vanished ({share:.1f} %, more than --max-changed {max_changed:g} %): "
                             "ransomware or a wrong mount? Nothing was uploaded")
        log.info("run.change_checked", **figures)
        spool.seek(0)
        for _ in range(count):
            yield pickle.load(spool)

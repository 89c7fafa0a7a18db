"""`obsbatch diff ID1 ID2 [PATH]`: what changed from one snapshot to another, one line per change with
restic's marks: `+` added, `-` removed, `M` modified (bytes, a symlink's target, a device's number), `U`
metadata only (mode, owners, mtime), `T` type changed; an added or removed directory comes with everything
beneath it. Then the totals. Directories whose tree hash is the same in both are never read (the Merkle
structure), so a nightly diff of a million-file tree reads only the directories that changed and their
ancestors. --json: one object per change, then {"totals": ...}.
"""

from __future__ import annotations

from typing import Sequence

from obsbatch import snapshot
from obsbatch.commands import history
from obsbatch.models import printable

DESCRIPTION = ("Show what changed between two snapshots (ID1 older, ID2 newer), under PATH if given: + added, "
               "- removed, M modified, U metadata only, T type changed; then the totals. Exit 0 compared, 1 PATH is "
               "in neither snapshot or an entry failed its check, 2 usage, access or no such snapshot.")


def main(argv: Sequence[str], started: float) -> int:
    return history.main("diff", argv, started, DESCRIPTION, _compare)


def _compare(config, reader: history.History) -> dict:
    from obsbatch.s3 import history as reading

    first, second = reader.record(config.first), reader.record(config.second)
    loaded = reader.trees([first, second])
    old = reading.entry_at(loaded, first, config.path, reader.on_damaged)
    new = reading.entry_at(loaded, second, config.path, reader.on_damaged)
    if old is None and new is None:
        raise history.NothingMatched(f"neither snapshot holds {config.path!r}")
    rel = b"/".join(reading.split(config.path))
    budget = reader.budget([first, second])
    if old is None:
        changes = iter([reading.Change(reading.ADDED, rel, None, new)])
    elif new is None:
        changes = iter([reading.Change(reading.REMOVED, rel, old, None)])
    else:
        changes = reading.differences(loaded, old, new, rel, budget, reader.on_damaged)
    totals = {kind: 0 for kind in reading.MARKS}
    added_bytes = removed_bytes = 0
    for change in changes:
        totals[change.kind] += 1
        entry = change.new if change.new is not None else change.old
        if change.new is not None and change.new[snapshot.TYPE] == snapshot.FILE and change.kind != reading.METADATA:
            added_bytes += change.new[snapshot.SIZE]
        if change.old is not None and change.old[snapshot.TYPE] == snapshot.FILE and change.kind != reading.METADATA:
            removed_bytes += change.old[snapshot.SIZE]
        if config.json:
            found = {"change": change.kind, "path": history.entry_fields(change.rel, entry, False)["path"],
                     "type": history.TYPE_NAMES.get(entry[snapshot.TYPE])}
            for side, one in (("before", change.old), ("after", change.new)):
                if one is not None:
                    found[side] = history.entry_fields(change.rel, one, True)
            history.emit_json(found)
        else:
            suffix = "/" if entry[snapshot.TYPE] == snapshot.DIRECTORY else ""
            history.emit(f"{reading.MARKS[change.kind]}  {printable(change.rel) or '.'}{suffix}")
    report = {"first": first["id"], "second": second["id"], "path": config.path, **totals,
              "bytes_added": added_bytes, "bytes_removed": removed_bytes}
    if config.json:
        history.emit_json({"totals": report})
    else:
        history.emit(f"{totals['added']} added, {totals['removed']} removed, {totals['modified']} modified, "
                     f"{totals['metadata']} metadata only, {totals['type']} type changed; "
                     f"{added_bytes} bytes added, {removed_bytes} bytes removed")
    return report

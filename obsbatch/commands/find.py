"""`obsbatch find PATTERN...`: which snapshots hold paths that match a glob (history.Pattern: `*` within a
name, `**` across directories; a glob without '/' matches a name at any depth), oldest snapshot first, each
match with its size, mtime and sha256, so "the last good nginx.conf" is one command. --snapshot searches one,
--newest/--oldest N the N newest or oldest. The trees the snapshots share are searched once (a memo of the
subtrees that hold no match), so a hundred snapshots of one slowly changing tree cost little more than one.
Nothing matched is exit 1 (as grep), so a script can test for it.
"""

from __future__ import annotations

from typing import Sequence

from obsbatch import snapshot
from obsbatch.commands import history
from obsbatch.models import printable

DESCRIPTION = ("Find the snapshots that hold paths matching a glob, with each match's size, mtime and sha256. "
               "Exit 0 found, 1 nothing matched or an entry failed its check, 2 usage, access or no such snapshot.")


def main(argv: Sequence[str], started: float) -> int:
    return history.main("find", argv, started, DESCRIPTION, _search)


def _search(config, reader: history.History) -> dict:
    from obsbatch.s3 import history as reading

    if config.snapshot:
        records = [reader.record(config.snapshot)]
    else:
        records = reader.records()
        if config.newest:
            records = records[-config.newest:]
        elif config.oldest:
            records = records[:config.oldest]
    if not records:
        raise history.NothingMatched(f"there is no snapshot under {reader.store.location} to search")
    loaded = reader.trees(records)
    pattern = reading.Pattern(config.patterns)
    barren: set = set()
    matches = 0
    holding = 0
    for record in records:
        found_here = 0
        for rel, entry in reading.matching(loaded, record, pattern, reader.budget([record]), barren,
                                           reader.on_damaged):
            found_here += 1
            if config.json:
                history.emit_json(dict(history.entry_fields(rel, entry, True), snapshot=record["id"],
                                       time=record.get("time")))
            else:
                sha = entry[snapshot.CONTENT] if entry[snapshot.TYPE] == snapshot.FILE else "-"
                history.emit("  ".join((record["id"], history.mode_text(entry), f"{entry[snapshot.SIZE]:>12}",
                                        history.mtime_text(entry[snapshot.MTIME], False), sha,
                                        printable(rel))))
        matches += found_here
        holding += bool(found_here)
    if not matches:
        raise history.NothingMatched(f"no entry of the {len(records)} snapshot(s) searched matches "
                                     f"{' '.join(config.patterns)}")
    return {"snapshots": len(records), "snapshots_matching": holding, "matches": matches}

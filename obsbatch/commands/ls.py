"""`obsbatch ls`: the entries of one snapshot (the latest, or --snapshot / --as-of) under a PATH, as `ls -l`
shows them: mode, uid/gid, size, mtime (UTC), path; --long adds each file's sha256 and version id, --recursive
everything beneath, --json one object per entry. Only the trees on the path are read (history.entry_at), so
listing one directory of a million-file snapshot decompresses a handful of trees. A PATH that is a file lists
that file; one the snapshot does not hold is exit 1.
"""

from __future__ import annotations

from typing import Sequence

from obsbatch import snapshot
from obsbatch.commands import history

DESCRIPTION = ("List the entries of a snapshot (default: the latest) under PATH: mode, owner, size, mtime, path; "
               "--long adds sha256 and version id. Exit 0 listed, 1 PATH is not in the snapshot or an entry failed "
               "its check, 2 usage, access or no such snapshot.")


def main(argv: Sequence[str], started: float) -> int:
    return history.main("ls", argv, started, DESCRIPTION, _list)


def _list(config, reader: history.History) -> dict:
    from obsbatch.s3 import history as reading

    record, loaded, top, rel = reader.at_path(config)
    if top[snapshot.TYPE] == snapshot.DIRECTORY:
        listed = reading.beneath(loaded, top, rel, config.recursive, reader.budget([record]), reader.on_damaged)
    else:
        listed = iter([(rel, top)])
    count = 0
    for path, entry in listed:
        if config.json:
            history.emit_json(history.entry_fields(path, entry, config.long))
        else:
            history.emit(history.entry_line(path, entry, config.long))
        count += 1
    return {"snapshot": record["id"], "path": config.path, "entries": count}

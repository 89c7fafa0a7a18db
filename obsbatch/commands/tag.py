"""`obsbatch tag --snapshot ID --add TAG --remove TAG`: pin a snapshot (an audit date, a ticket) so that
`forget --keep-tag TAG` keeps it, or unpin it. A tag is an empty object beside the record (s3.retention.tag_key):
the record is sealed and signed as written, so it is not changed. Prints the snapshot's tags afterwards.
"""

from __future__ import annotations

from typing import Sequence

from obsbatch.commands import history
from obsbatch.errors import ExitCode, ObsbatchError

DESCRIPTION = ("Add or remove a snapshot's tags (forget --keep-tag keeps a tagged snapshot). Exit 0 done, 1 the "
               "store refused to remove a tag, 2 usage, access or no such snapshot.")


class TagNotRemoved(ObsbatchError):
    exit_code = ExitCode.PARTIAL


def main(argv: Sequence[str], started: float) -> int:
    return history.main("tag", argv, started, DESCRIPTION, _tag)


def _tag(config, reader: history.History) -> dict:
    from obsbatch.s3 import retention

    store = reader.store
    record = reader.record(config.snapshot)  # it must exist (exit 2 if not), and be sealed
    with reader.errors(f"tag the snapshot {record['id']}"):
        try:
            retention.set_tags(reader.client, store.bucket, store.prefix, record["id"], config.add_tag,
                               config.remove_tag)
        except retention.TagRefused as exc:
            raise TagNotRemoved(f"the store refused to remove a tag ({exc})") from None
        now = sorted(retention.tags(reader.client, store.bucket, store.prefix).get(record["id"], []))
    if config.json:
        history.emit_json({"id": record["id"], "tags": now})
    else:
        history.emit(f"{record['id']}  {' '.join(now) or '(no tags)'}")
    return {"snapshot": record["id"], "tags": now}

"""What `ls`, `diff`, `find` and `dump` share: the run from flags to exit code, and a History that reads records
and trees for them. They only read, so a Ctrl-C has nothing to finish and a reader that leaves (`| head`)
ends the command quietly.

Exit codes, the same for each: 0 done; 1 nothing matched (a PATH the snapshot does not hold, a glob no entry
matches, no snapshot at all under the prefix), an entry of the snapshot failed its check (named, left out), or a file's bytes did not match their
sha256 (dump); 2 usage, access or a snapshot id that does not exist; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import stat as statmod
import sys
import time
from typing import Callable, List, NamedTuple, Optional, Sequence

import structlog

from obsbatch import logs, snapshot
from obsbatch.commands import runner
from obsbatch.errors import ExitCode, FatalExit, ObsbatchError, UsageError
from obsbatch.models import display, printable, undisplay

log = structlog.get_logger()

#: GETs of records in flight at once (find reads every record of the prefix; snapshots does the same).
READ_THREADS = 32


class NothingMatched(ObsbatchError):
    """A PATH the snapshot does not hold, a glob that matches nothing: exit 1, one sentence."""

    exit_code = ExitCode.PARTIAL


def main(command: str, argv: Sequence[str], started: float, description: str,
         body: Callable[[object, "History"], dict]) -> int:
    """Parse, run `body(config, history)` (it prints, and returns its summary's fields), log the summary; every
    fatal error one sentence and its exit code. The exit code is 1 when an entry was damaged."""
    try:
        config = runner.parse(command, argv, os.environ, description=description)
    except UsageError as exc:
        runner.usage_exit(str(exc), command)
    logs.configure(config.output.level, config.output.log_format, host=config.output.host_id)
    history = History(config, command)
    try:
        with history:
            report = body(config, history)
            sys.stdout.flush()
    except BrokenPipeError:  # the reader left (`obsbatch ls | head`): what it read was what it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except ObsbatchError as exc:
        log.error(f"{command}.fatal", error=str(exc), error_type=type(exc).__name__, exit_code=int(exc.exit_code))
        raise FatalExit(exc.exit_code, str(exc)) from None
    except KeyboardInterrupt:
        log.warning(f"{command}.interrupted")
        raise FatalExit(ExitCode.INTERRUPTED, "interrupted") from None
    except Exception as exc:  # a bug: one line; the traceback only at debug level (as restore and verify)
        log.error(f"{command}.crashed", error=f"{type(exc).__name__}: {exc}", exc_info=config.output.traceback)
        raise FatalExit(ExitCode.FATAL, f"crashed: {type(exc).__name__}: {exc}") from None
    code = ExitCode.PARTIAL if history.damaged or report.get("failed") else ExitCode.OK
    report = dict(report, damaged_entries=history.damaged, requests=history.requests, seconds=round(time.time() - started, 3),
                  exit_code=int(code))
    (log.info if code == ExitCode.OK else log.warning)(f"{command}.summary", **report)
    if config.output.summary == "json":
        print(json.dumps(report, sort_keys=True), file=sys.stderr if command == "dump" else sys.stdout, flush=True)
    return code


class AtPath(NamedTuple):
    """A path in a snapshot: the record, its trees, the path's entry and the path as bytes."""

    record: dict
    loaded: snapshot.Trees
    entry: list
    rel: bytes


class History:
    """The store as these commands read it: one client, the snapshot records, their trees. A context: the
    trees' temporary files are closed at its end. `damaged` counts the entries that failed their check (each
    logged `<command>.damaged_entry`, left out)."""

    def __init__(self, config, command: str):
        self.config = config
        self.command = command
        self.store = config.store
        self.damaged = 0
        #: HTTP requests sent (summary "requests"): what a command cost against the store.
        self.requests = 0
        self._loaded: List[snapshot.Trees] = []
        self._client = None

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc_info) -> None:
        for loaded in self._loaded:
            loaded.close()

    @property
    def client(self):
        if self._client is None:
            from obsbatch.s3 import client as s3
            from obsbatch.s3.endpoint import Endpoint

            self._client = s3.make_client(Endpoint.from_config(self.config), pool_connections=READ_THREADS)
            # Each HTTP request, retries included, counted for the summary (botocore's documented event).
            self._client.meta.events.register("before-send.s3", self._count_request)
        return self._client

    def _count_request(self, **kwargs) -> None:
        self.requests += 1

    @functools.cached_property
    def public_key(self):
        from obsbatch import signing

        return signing.load_public_key(self.config.public_key) if self.config.public_key else None

    def errors(self, doing: str):
        from obsbatch.s3 import remote

        return remote.store_errors(self.store, doing)

    def chosen(self, snapshot_id: str = "", as_of: Optional[float] = None) -> dict:
        """The snapshot asked for (--snapshot, --as-of, else the latest; with --public-key the latest trusted);
        SnapshotError (exit 2) when the prefix has none."""
        from obsbatch.s3 import remote

        found = remote.chosen_snapshot(self.client, self.store, snapshot_id, as_of, self.config.public_key,
                                       self.command)
        if found is None:  # exit 1, as `snapshots` and a restore of an empty listing say it
            raise NothingMatched(f"there is no snapshot under {self.store.location} (check --bucket and --prefix; "
                                 "obsbatch snapshots lists them)")
        return found

    def record(self, snapshot_id: str) -> dict:
        from obsbatch.s3 import snapshots

        with self.errors(f"read the snapshot {snapshot_id}"):
            return snapshots.record(self.client, self.store.bucket, self.store.prefix, snapshot_id,
                                    self.store.reading.read_params(""), self.public_key)

    def records(self) -> List[dict]:
        """Every record of the prefix, oldest first, READ_THREADS at once; a damaged or (with --public-key)
        untrusted one is logged and left out."""
        from obsbatch.s3 import snapshots

        def read(snapshot_id: str) -> Optional[dict]:
            try:
                return snapshots.record(self.client, self.store.bucket, self.store.prefix, snapshot_id,
                                        self.store.reading.read_params(""), self.public_key)
            except snapshots.SnapshotDamaged as exc:
                log.error(f"{self.command}.untrusted_snapshot" if isinstance(exc, snapshots.SnapshotUntrusted)
                          else f"{self.command}.damaged_snapshot", id=snapshot_id, error=str(exc),
                          detail="left out")
                self.damaged += 1
                return None

        with self.errors(f"read the snapshots under {self.store.location}"):
            listed = list(snapshots.ids(self.client, self.store.bucket, self.store.prefix))
            return [one for one in snapshots.read_all(read, listed, READ_THREADS) if one is not None]

    def trees(self, records: List[dict]) -> snapshot.Trees:
        """The trees of `records` (their packs, each read once), closed when the command ends."""
        from obsbatch.s3 import snapshots

        with self.errors(f"read the trees of {', '.join(one['id'] for one in records)}"):
            loaded = snapshots.trees_of(self.client, self.store.bucket, self.store.prefix, records,
                                        self.store.reading.read_params(""))
        self._loaded.append(loaded)
        return loaded

    def at_path(self, config) -> "AtPath":
        """The snapshot --snapshot/--as-of choose (else the latest), its trees, and the entry config.path names
        in it (ls, dump); NothingMatched (exit 1) when it holds no such path."""
        from obsbatch.s3 import history as reading

        record = self.chosen(config.snapshot or "", config.as_of)
        loaded = self.trees([record])
        entry = reading.entry_at(loaded, record, config.path, self.on_damaged)
        if entry is None:
            raise NothingMatched(f"the snapshot {record['id']} holds no {config.path!r}")
        return AtPath(record, loaded, entry, b"/".join(reading.split(config.path)))

    def budget(self, records: List[dict]):
        """A walk's bound: the entries the records count (snapshots.entry_budget), summed."""
        from obsbatch.s3 import snapshots

        return snapshots.Budget(sum(snapshots.entry_budget(one) for one in records))

    def on_damaged(self, where: bytes, problem: str) -> None:
        """An entry that failed its check: named, left out with what is beneath it, exit 1."""
        self.damaged += 1
        log.error(f"{self.command}.damaged_entry", path=display(where), error=f"the snapshot's entry {problem}",
                  detail="left out, and anything beneath it (altered or forged in the store?)")


# --- printing entries -------------------------------------------------------------------------------------

_TYPE_BITS = {snapshot.FILE: statmod.S_IFREG, snapshot.DIRECTORY: statmod.S_IFDIR, snapshot.SYMLINK: statmod.S_IFLNK,
              snapshot.FIFO: statmod.S_IFIFO, snapshot.SOCKET: statmod.S_IFSOCK,
              snapshot.CHAR_DEVICE: statmod.S_IFCHR, snapshot.BLOCK_DEVICE: statmod.S_IFBLK}
TYPE_NAMES = {snapshot.FILE: "file", snapshot.DIRECTORY: "dir", snapshot.SYMLINK: "symlink", snapshot.FIFO: "fifo",
              snapshot.SOCKET: "socket", snapshot.CHAR_DEVICE: "chardev", snapshot.BLOCK_DEVICE: "blockdev",
              snapshot.SPECIAL_UNKNOWN: "unknown"}


def mode_text(entry: list) -> str:
    """`ls -l`'s mode column: the type letter and the permission bits (`drwxr-xr-x`)."""
    return statmod.filemode(_TYPE_BITS.get(entry[snapshot.TYPE], 0) | entry[snapshot.MODE])


def mtime_text(mtime_ns: int, exact: bool) -> str:
    """An mtime in UTC: to the second for a table, to the nanosecond (RFC 3339) for JSON."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    try:
        moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    except OverflowError:  # a forged or odd mtime far outside datetime's years: the number itself
        return str(mtime_ns)
    if exact:
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def entry_fields(rel: bytes, entry: list, long: bool) -> dict:
    """An entry as JSON: its path (display spelling), type, size, mode (octal text), owners, mtime; a symlink's
    target, a device's number; with `long` a file's sha256, version id and hardlink group, and the names of
    any entry's extended attributes."""
    kind = entry[snapshot.TYPE]
    found = {"path": display(rel), "type": TYPE_NAMES.get(kind, kind), "size": entry[snapshot.SIZE],
             "mode": f"{entry[snapshot.MODE]:04o}", "uid": entry[snapshot.UID], "gid": entry[snapshot.GID],
             "mtime": mtime_text(entry[snapshot.MTIME], True)}
    if kind == snapshot.SYMLINK:
        found["target"] = entry[snapshot.CONTENT]
    elif kind in (snapshot.CHAR_DEVICE, snapshot.BLOCK_DEVICE):
        found["rdev"] = int(entry[snapshot.CONTENT])
    if long and snapshot.xattrs(entry):
        found["xattrs"] = sorted(snapshot.xattrs(entry))
    if long and kind == snapshot.FILE:
        found.update(sha256=entry[snapshot.CONTENT], version_id=entry[snapshot.VERSION],
                     hardlink_group=entry[snapshot.LINK])
    elif long and kind == snapshot.DIRECTORY:
        found["tree"] = entry[snapshot.CONTENT]
    return found


def entry_line(rel: bytes, entry: list, long: bool) -> str:
    """An entry as a table line: mode, uid/gid, size, mtime (UTC), path (control characters as \\xNN), a
    symlink's `-> target`; with `long` a file's sha256 and version id after the size."""
    parts = [mode_text(entry), f"{entry[snapshot.UID]}/{entry[snapshot.GID]}", f"{entry[snapshot.SIZE]:>12}",
             mtime_text(entry[snapshot.MTIME], False)]
    if long:
        is_file = entry[snapshot.TYPE] == snapshot.FILE
        parts += [entry[snapshot.CONTENT] if is_file else "-" * 64, (entry[snapshot.VERSION] or "-") if is_file else "-"]
    line = "  ".join(parts) + "  " + (printable(rel) or ".")
    if entry[snapshot.TYPE] == snapshot.SYMLINK:
        line += " -> " + printable(undisplay(entry[snapshot.CONTENT]))
    return line


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")


def emit_json(found: dict) -> None:
    sys.stdout.write(json.dumps(found, sort_keys=True) + "\n")

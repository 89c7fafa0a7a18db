"""The state journal: what was uploaded, verified, with which fingerprint (sqlite3, WAL).

A file whose fingerprint (size, mtime_ns, ctime_ns, dev, ino) equals the one recorded for its destination
(endpoint, bucket, key) at its last verified upload is skipped without any request to the server. ctime is
part of it because it moves on every content change even when size and mtime are put back (`touch -r`,
`rsync --times`), which a size+mtime comparison would miss.

Crash safety: a row is written only for an UPLOADED Outcome (the server verified the body), in batched
transactions. A crash loses at most the last uncommitted batch, and those files are simply uploaded again:
a file that was not uploaded is never recorded as uploaded. WAL mode keeps readers and the one writer apart
and makes each commit atomic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
import uuid
from typing import Callable, Iterable, Iterator, Optional, Tuple, Union

import structlog

from obsbatch.errors import JournalError
from obsbatch.models import Candidate, CopySource, Kind, Outcome, Reason, WorkItem, display, fingerprint

log = structlog.get_logger()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    endpoint TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    etag TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    version_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (endpoint, bucket, key)
) WITHOUT ROWID
"""
_UPLOAD_COLUMNS = "endpoint, bucket, key, size, mtime_ns, ctime_ns, dev, ino, sha256, etag, uploaded_at, version_id"

#: The key up to and including its last '/' ("" for a key without one), as an SQLite expression: rtrim strips
#: every trailing character that occurs in the key with its slashes removed, so it stops at the last '/'.
_DIRECTORY_OF_KEY = "rtrim(key, replace(key, '/', ''))"
# An index on that expression (SQLite >= 3.9): created on first open, also for journals of older versions.
_BY_DIRECTORY = f"CREATE INDEX IF NOT EXISTS uploads_by_directory ON uploads (endpoint, bucket, {_DIRECTORY_OF_KEY})"
#: Verified uploads by size, mtime and inode: where a file new under its key may already be stored (a rename
#: and `mv` of a directory keep all four; `cp -a` and `rsync -a` the size and mtime). Every lookup is a point
#: query on it: a tree of many files of one size and mtime (an unpacked archive) must not make one a scan.
_BY_STAT = "CREATE INDEX IF NOT EXISTS uploads_by_stat ON uploads (endpoint, bucket, size, mtime_ns, dev, ino)"
#: Past this many journaled files in one directory, its lookups go one file at a time (memory bound).
DIRECTORY_ROWS = 20000

#: Files deferred and not uploaded since. `run` is the last run that deferred it: after a complete walk,
#: the rows under the run's prefix that it did not defer are deleted (Journal.end_deferrals_not_seen).
_DEFERRED_SCHEMA = """
CREATE TABLE IF NOT EXISTS deferred (
    endpoint TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    first_seen REAL NOT NULL,
    count INTEGER NOT NULL,
    reason TEXT NOT NULL,
    run TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (endpoint, bucket, key)
) WITHOUT ROWID
"""

#: The chain head of the last manifest written for each destination (issue #14): the next run's manifest
#: header cites it, so the manifests of successive runs form one chain (`verify-manifest A B C`).
_HEADS_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifest_heads (
    endpoint TEXT NOT NULL,
    bucket TEXT NOT NULL,
    prefix TEXT NOT NULL,
    head TEXT NOT NULL,
    run_id TEXT NOT NULL,
    written_at REAL NOT NULL,
    PRIMARY KEY (endpoint, bucket, prefix)
) WITHOUT ROWID
"""

#: Snapshots (issue #20): the trees (directory records) known to be stored, and in which pack; and the last
#: snapshot written for each destination, which the next one cites and the mass-change guard compares with.
_SNAPSHOT_SCHEMA = ("""
CREATE TABLE IF NOT EXISTS snapshot_trees (
    endpoint TEXT NOT NULL,
    bucket TEXT NOT NULL,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL,
    pack TEXT NOT NULL,
    PRIMARY KEY (endpoint, bucket, prefix, hash)
) WITHOUT ROWID
""", """
CREATE TABLE IF NOT EXISTS snapshot_dirs (
    endpoint TEXT NOT NULL,
    bucket TEXT NOT NULL,
    prefix TEXT NOT NULL,
    rel BLOB NOT NULL,
    cache_key TEXT NOT NULL,
    hash TEXT NOT NULL,
    pack TEXT NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    directories INTEGER NOT NULL,
    symlinks INTEGER NOT NULL,
    special INTEGER NOT NULL,
    PRIMARY KEY (endpoint, bucket, prefix, rel)
) WITHOUT ROWID
""", """
CREATE TABLE IF NOT EXISTS store_urls (
    endpoint TEXT NOT NULL,
    bucket TEXT NOT NULL,
    addressing_style TEXT NOT NULL,
    base TEXT NOT NULL,
    region TEXT NOT NULL,
    PRIMARY KEY (endpoint, bucket, addressing_style)
) WITHOUT ROWID
""", """
CREATE TABLE IF NOT EXISTS snapshot_heads (
    endpoint TEXT NOT NULL,
    bucket TEXT NOT NULL,
    prefix TEXT NOT NULL,
    id TEXT NOT NULL,
    head TEXT NOT NULL,
    files INTEGER NOT NULL,
    written_at REAL NOT NULL,
    PRIMARY KEY (endpoint, bucket, prefix)
) WITHOUT ROWID
""")

#: Rows per transaction, and the longest a verified upload waits to be committed.
BATCH_ROWS = 500
BATCH_SECONDS = 2.0


def default_path(environ) -> str:
    """$STATE_DIRECTORY/obsbatch.db under systemd (StateDirectory=), else $XDG_STATE_HOME/obsbatch/obsbatch.db."""
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0]  # systemd joins several with ':'
    if state_dir:
        return os.path.join(state_dir, "obsbatch.db")
    xdg = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "obsbatch", "obsbatch.db")


class Journal:
    """One run's view of the state file. Only the parent process opens it."""

    def __init__(self, path: str, endpoint: str, bucket: str, scratch: bool = False):
        #: A journal of this run alone (--no-state), removed with its directory on close.
        self.scratch = scratch
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.endpoint = endpoint
        self.bucket = bucket
        self.db = sqlite3.connect(path, isolation_level=None)  # explicit transactions below
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across application crashes (kill -9) in WAL mode; only a power loss can drop
        # the last commits, and then those files are uploaded again.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(_SCHEMA)
        self.db.execute(_BY_DIRECTORY)
        self.db.execute(_BY_STAT)
        self.db.execute(_DEFERRED_SCHEMA)
        self.db.execute(_HEADS_SCHEMA)
        for schema in _SNAPSHOT_SCHEMA:
            self.db.execute(schema)
        if "version_id" not in {row[1] for row in self.db.execute("PRAGMA table_info(uploads)")}:
            # A journal from before issue #20: its uploads are recorded without their version; a snapshot
            # names them without one (the current object, checked against its sha256 on restore).
            self.db.execute("ALTER TABLE uploads ADD COLUMN version_id TEXT NOT NULL DEFAULT ''")
        if "run" not in {row[1] for row in self.db.execute("PRAGMA table_info(deferred)")}:
            # A journal from before issue #11: its rows carry no run, so the first complete walk ends those
            # it does not defer again.
            self.db.execute("ALTER TABLE deferred ADD COLUMN run TEXT NOT NULL DEFAULT ''")
        #: This run, as the deferred table names it.
        self.run = uuid.uuid4().hex
        self.remote = False  # a --verify-remote listing is loaded (load_remote)
        #: Files `filter` found journaled, and those of them whose size or mtime moved (stages.guard).
        self.known_seen = 0
        self.known_changed = 0
        #: Files new under their key with the size, mtime and inode of a journaled upload of another key:
        #: renamed or moved on their filesystem, so their old keys' absence is no vanishing. Not a match of size
        #: and mtime alone (a copy), which a tree rewritten into new files could fake.
        self.known_moved = 0
        #: The key prefixes (directories) of the files this run recorded an upload of: their trees are rebuilt.
        self.touched: set = set()
        self._pending: list = []  # uploads rows to insert
        self._cleared: list = []  # deferred rows to delete: those files were uploaded
        self._deferrals: list = []  # deferred rows to upsert
        self._last_commit = time.monotonic()

    @contextlib.contextmanager
    def _failing_as(self, action: str):
        """sqlite3 errors as one sentence (JournalError): the run then ends with its summary, not a traceback."""
        try:
            yield
        except sqlite3.Error as exc:
            raise JournalError(f"cannot {action} the state journal {self.path}: {exc}") from None

    def _columns(self) -> str:
        # The fingerprint, and the ETag only when a remote listing is loaded: a no-op run builds a row per
        # file, and each column is an object made (issue #12).
        return "size, mtime_ns, ctime_ns, dev, ino, etag" if self.remote else "size, mtime_ns, ctime_ns, dev, ino"

    def _journaled(self, key: str, columns: str = ""):
        return self.db.execute(
            f"SELECT {columns or self._columns()} FROM uploads WHERE endpoint=? AND bucket=? AND key=?",
            (self.endpoint, self.bucket, key)).fetchone()

    def _directory(self, directory: str, columns: str = "") -> Optional[dict]:
        """The journal rows of one directory's files ({key: fingerprint [+ etag]}), or None if it has too many
        to hold.

        One query per directory instead of one per file: a no-op run over 20,000 files spent a fifth of its
        time in per-file SELECTs (issue #5). The walk yields a directory's files together, so each
        directory is read once; memory is bounded by DIRECTORY_ROWS, past which lookups go per file.
        """
        rows = self.db.execute(
            # INDEXED BY: without ANALYZE statistics the planner prefers the primary key's (endpoint, bucket)
            # prefix, which scans the whole bucket's rows for every directory.
            f"SELECT key, {columns or self._columns()} FROM uploads INDEXED BY uploads_by_directory "
            "WHERE endpoint=? AND bucket=? AND "
            f"{_DIRECTORY_OF_KEY} = ? LIMIT ?", (self.endpoint, self.bucket, directory, DIRECTORY_ROWS + 1)).fetchall()
        if len(rows) > DIRECTORY_ROWS:
            return None
        return {row[0]: row[1:] for row in rows}

    #: What a snapshot records of a stored file: its fingerprint (to tell whether the walked file is the
    #: stored one), then its sha256 and version id.
    STORED = "size, mtime_ns, ctime_ns, dev, ino, sha256, version_id, etag"

    def stored(self, directory: str) -> "Stored":
        """The last verified upload of each file of one directory (key prefix ending in '/'), as `STORED`
        rows: one query per directory, or per file for a directory past DIRECTORY_ROWS."""
        with self._failing_as("read"):
            rows = self._directory(directory, self.STORED)
        return Stored(rows, self._stored_one)

    def _stored_one(self, key: str) -> Optional[tuple]:
        with self._failing_as("read"):
            return self._journaled(key, self.STORED)

    def _remote(self, key: str):
        return self.db.execute("SELECT size, etag, version FROM remote WHERE key=?", (key,)).fetchone()

    def knows(self, prefix: str) -> bool:
        """Whether any verified upload under `prefix` is journaled: a journal that knows none is missing or
        another's (another user, --state, a rebuilt host), and the run seeds it from the latest snapshot."""
        return self.db.execute("SELECT 1 FROM uploads WHERE endpoint=? AND bucket=? AND key >= ? AND key < ? LIMIT 1",
                               (self.endpoint, self.bucket, prefix, prefix + "\U0010ffff")).fetchone() is not None

    def _remote_table(self) -> None:
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS remote (key TEXT PRIMARY KEY, size INTEGER, etag TEXT, "
                        "version TEXT NOT NULL DEFAULT '')")
        self.db.execute("DELETE FROM remote")

    def seed(self, rows: Iterable[tuple]) -> int:
        """(key, size, etag, version) of each file the latest snapshot holds whose version the store still has,
        into the table --verify-remote fills: a file of that size under that key is then compared with the
        stored version by a worker (read and hashed, no upload) instead of uploaded again."""
        self._remote_table()
        count = 0
        batch = []
        for row in rows:
            batch.append(row)
            if len(batch) >= 10000:
                count += self._remote_rows(batch)
                batch = []
        count += self._remote_rows(batch)
        self.remote = True
        return count

    def _remote_rows(self, rows: list) -> int:
        with self._failing_as("write"), self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO remote VALUES (?,?,?,?)", rows)
        return len(rows)

    def empty(self) -> bool:
        """No verified upload to this bucket yet: a first run."""
        return self.db.execute("SELECT 1 FROM uploads WHERE endpoint=? AND bucket=? LIMIT 1",
                               (self.endpoint, self.bucket)).fetchone() is None

    def load_remote(self, pages) -> int:
        """--verify-remote: stream a ListObjectsV2 listing (pages of Contents) into a table, not into memory."""
        self._remote_table()
        count = 0
        for page in pages:
            count += self._remote_rows([(o["Key"], o["Size"], o.get("ETag", "").strip('"'), "")
                                        for o in page.get("Contents", [])])
        self.remote = True
        return count

    def filter(self, items: Iterable[Union[Candidate, Outcome]],
               unchanged=None) -> Iterator[Union[Candidate, Outcome]]:
        """Turn Candidates whose fingerprint matches their last verified upload into SKIPPED/unchanged.

        With a remote listing loaded (--verify-remote), "unchanged" also needs the object to be there with the
        journaled size and ETag, or the file is uploaded again; and a file the journal does not know whose
        key holds a same-size object is sent to a worker with that ETag, to be compared rather than uploaded.

        A Candidate passed on to be uploaded carries a copy_source where a verified upload may hold its bytes
        (_copy_source): the worker then stores it by a server-side copy if its sha256 agrees.

        unchanged: if given, called for each unchanged file *instead of* yielding an Outcome for it.
        For a run whose records nobody reads one by one (no manifest, no telemetry, no debug log), the
        Outcome, its trip down the pipeline and its Summary.add were 40% of a no-op run (issue #5).
        """
        directory, rows = None, None
        for item in items:
            if not isinstance(item, Candidate):
                yield item
                continue
            key, st = item.key, item.stat
            try:  # not `with self._failing_as`: a context manager per file costs a no-op run ~5% (issue #5)
                if not key.startswith(directory or "\0") or "/" in key[len(directory):]:
                    directory = key[:key.rfind("/") + 1]
                    rows = self._directory(directory)
                row = rows.get(key) if rows is not None else self._journaled(key)
                remote = self._remote(key) if self.remote else None
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read the state journal {self.path}: {exc}") from None
            fingerprint_matches = row is not None and row[:5] == fingerprint(st)
            if row is not None:  # the mass-change guard's figures (stages.guard)
                self.known_seen += 1
                self.known_changed += row[0] != st.st_size or row[1] != st.st_mtime_ns
            if self.remote:
                if fingerprint_matches and (remote is None or remote[:2] != (st.st_size, row[5])):
                    log.warning("journal.remote_mismatch", key=key, detail="journaled, but the stored object is "
                                "missing or differs; uploading again")
                    yield item
                    continue
                if not fingerprint_matches and remote is not None and remote[0] == st.st_size:
                    yield item._replace(remote_etag=remote[1], remote_version=remote[2])
                    continue
            if fingerprint_matches:
                if unchanged is not None:
                    unchanged()
                    continue
                yield Outcome(Kind.SKIPPED, display(item.path), key=key, reason=Reason.UNCHANGED,
                              size=st.st_size, mtime_ns=st.st_mtime_ns)
                continue
            source = self._copy_source(key, st, row) if st.st_size else None
            yield item._replace(copy_source=source) if source is not None else item

    def _copy_source(self, key: str, st: os.stat_result, row: Optional[tuple]) -> Optional[CopySource]:
        """A verified upload whose bytes the file may be: its own key's, if only its ctime moved (chmod, chown);
        else one of the same size, mtime and inode (renamed, moved); else any one of the same size and mtime
        (a copy made with its mtime). The worker compares the file's sha256 with it before copying, so a wrong
        guess costs nothing but this lookup.

        Asked only for a file about to be uploaded (new under its key, or changed), so a no-op run never
        asks; each query is a point lookup (primary key, uploads_by_stat). An empty file is uploaded as it
        is: its PUT costs what a copy would.
        """
        size, mtime = st.st_size, st.st_mtime_ns
        columns = "SELECT key, version_id, etag, sha256 FROM uploads"
        try:
            if row is not None and row[0] == size and row[1] == mtime:
                found = self.db.execute(f"{columns} WHERE endpoint=? AND bucket=? AND key=?",
                                        (self.endpoint, self.bucket, key)).fetchone()
            else:
                found = self.db.execute(
                    f"{columns} INDEXED BY uploads_by_stat WHERE endpoint=? AND bucket=? AND size=? AND mtime_ns=? "
                    "AND dev=? AND ino=? LIMIT 1", (self.endpoint, self.bucket, size, mtime, st.st_dev, st.st_ino)
                ).fetchone()
                self.known_moved += found is not None and row is None
                found = found or self.db.execute(
                    f"{columns} INDEXED BY uploads_by_stat WHERE endpoint=? AND bucket=? AND size=? AND mtime_ns=? "
                    "LIMIT 1", (self.endpoint, self.bucket, size, mtime)).fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the state journal {self.path}: {exc}") from None
        return CopySource(*found) if found is not None else None

    def record(self, item: WorkItem, outcome: Outcome) -> None:
        """Note a verified upload (or an object proven identical), which also ends the file's deferral;
        committed in batches (module docstring)."""
        if not (outcome.kind is Kind.UPLOADED or outcome.reason is Reason.ALREADY_STORED):
            return
        self._pending.append((self.endpoint, self.bucket, item.key, *item.fingerprint, outcome.sha256, outcome.etag,
                              outcome.ended, outcome.version_id or ""))
        self.touched.add(item.key[:item.key.rfind("/") + 1])
        self._cleared.append((self.endpoint, self.bucket, item.key))
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if (len(self._pending) + len(self._cleared) + len(self._deferrals) >= BATCH_ROWS
                or time.monotonic() - self._last_commit >= BATCH_SECONDS):
            self.commit()

    def deferral(self, outcome: Outcome, now: float) -> tuple[float, int]:
        """Note one more deferral of outcome.key; return (first seen, times deferred so far, this one included).

        A deferral carries over runs until the file is uploaded (`record`) or a complete walk no longer
        defers it (`end_deferrals_not_seen`), so a writer that keeps a file open day after day shows up,
        however many runs have passed (--max-defer).
        """
        with self._failing_as("read"):
            row = self.db.execute("SELECT first_seen, count FROM deferred WHERE endpoint=? AND bucket=? AND key=?",
                                  (self.endpoint, self.bucket, outcome.key)).fetchone()
        first_seen, count = (row[0], row[1] + 1) if row else (now, 1)
        # Read from what is committed: a path has one outcome per run, so this run cannot have queued it yet.
        # Queued, not committed here: deferrals are few, and this runs as a Summary observer, where a commit
        # that fails would keep the Outcome from the observers after it (the manifest). They go with the
        # next batch of uploads, or the run's last commit.
        self._deferrals.append((self.endpoint, self.bucket, outcome.key, first_seen, count, outcome.reason.value,
                                self.run))
        return first_seen, count

    def end_deferrals_not_seen(self, prefix: str) -> int:
        """After a complete walk: end the deferral of every file under `prefix` that this run did not defer.

        It was deleted, renamed away, excluded, or became stable (and is uploaded or unchanged); either way a
        new file at its path later must start afresh, not inherit a first deferral from before (issue #11).
        Only a walk that reached every directory may say so: a stopped run or an unreadable directory leaves
        the rows alone. Returns how many deferrals ended.
        """
        self.commit()
        with self._failing_as("write"), self.db:
            self.db.execute("BEGIN")
            ended = self.db.execute(
                "DELETE FROM deferred WHERE endpoint=? AND bucket=? AND run<>? AND substr(key, 1, ?)=?",
                (self.endpoint, self.bucket, self.run, len(prefix), prefix)).rowcount
        return ended

    def last_manifest_head(self, prefix: str) -> Optional[str]:
        """The head of the last manifest written for this destination and prefix, or None."""
        with self._failing_as("read"):
            row = self.db.execute("SELECT head FROM manifest_heads WHERE endpoint=? AND bucket=? AND prefix=?",
                                  (self.endpoint, self.bucket, prefix)).fetchone()
        return row[0] if row else None

    def record_manifest_head(self, prefix: str, head: str, run_id: str) -> None:
        """Remember this run's manifest head for the next run's header (its own transaction, now)."""
        with self._failing_as("write"), self.db:
            self.db.execute("INSERT OR REPLACE INTO manifest_heads VALUES (?,?,?,?,?,?)",
                            (self.endpoint, self.bucket, prefix, head, run_id, time.time()))

    def tree_pack(self, prefix: str, digest: str) -> Optional[str]:
        """The pack that holds tree `digest` in the store, if a snapshot of this destination stored it."""
        with self._failing_as("read"):
            row = self.db.execute("SELECT pack FROM snapshot_trees WHERE endpoint=? AND bucket=? AND prefix=? "
                                  "AND hash=?", (self.endpoint, self.bucket, prefix, digest)).fetchone()
        return row[0] if row else None

    def cached_tree(self, prefix: str, rel: bytes) -> Optional[tuple]:
        """(cache key, tree hash, pack, files, bytes, directories, symlinks, special, 0, 0) of the directory's
        last tree (stages.snapshot.build), or None."""
        with self._failing_as("read"):
            row = self.db.execute("SELECT cache_key, hash, pack, files, bytes, directories, symlinks, special "
                                  "FROM snapshot_dirs WHERE endpoint=? AND bucket=? AND prefix=? AND rel=?",
                                  (self.endpoint, self.bucket, prefix, rel)).fetchone()
        return None if row is None else (*row, 0, 0)

    def store_url(self, addressing_style: str) -> Optional[tuple]:
        """(base URL, region) botocore resolved for this endpoint and bucket (s3.remote.Remote.learned_base)."""
        with self._failing_as("read"):
            row = self.db.execute("SELECT base, region FROM store_urls WHERE endpoint=? AND bucket=? AND "
                                  "addressing_style=?", (self.endpoint, self.bucket, addressing_style)).fetchone()
        return tuple(row) if row else None

    def record_store_url(self, addressing_style: str, learned: tuple) -> None:
        with self._failing_as("write"), self.db:
            self.db.execute("INSERT OR REPLACE INTO store_urls VALUES (?,?,?,?,?)",
                            (self.endpoint, self.bucket, addressing_style, *learned))

    def last_snapshot(self, prefix: str) -> Optional[Tuple[str, str, int]]:
        """(id, head, files) of the last snapshot this journal wrote for the destination, or None."""
        with self._failing_as("read"):
            row = self.db.execute("SELECT id, head, files FROM snapshot_heads WHERE endpoint=? AND bucket=? AND "
                                  "prefix=?", (self.endpoint, self.bucket, prefix)).fetchone()
        return tuple(row) if row else None

    def record_snapshot(self, prefix: str, snapshot_id: str, head: str, files: int, pack: str,
                        new_trees: Iterable[str], rebuilt: Iterable[tuple]) -> None:
        """After the snapshot record is stored: its head for the next one, the trees its pack holds, and the
        directories whose trees were rebuilt (their cache entries, stages.snapshot.build)."""
        with self._failing_as("write"), self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO snapshot_trees VALUES (?,?,?,?,?)",
                                ((self.endpoint, self.bucket, prefix, digest, pack) for digest in new_trees))
            self.db.executemany("INSERT OR REPLACE INTO snapshot_dirs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                                ((self.endpoint, self.bucket, prefix, *row) for row in rebuilt))
            self.db.execute("INSERT OR REPLACE INTO snapshot_heads VALUES (?,?,?,?,?,?,?)",
                            (self.endpoint, self.bucket, prefix, snapshot_id, head, files, time.time()))

    def commit(self) -> None:
        """Write what is pending in one transaction. On failure (JournalError) it all stays pending."""
        if self._pending or self._cleared or self._deferrals:
            with self._failing_as("write"), self.db:  # BEGIN ... COMMIT, or ROLLBACK on error
                self.db.execute("BEGIN")
                self.db.executemany(f"INSERT OR REPLACE INTO uploads ({_UPLOAD_COLUMNS}) "
                                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", self._pending)
                self.db.executemany("DELETE FROM deferred WHERE endpoint=? AND bucket=? AND key=?", self._cleared)
                self.db.executemany("INSERT OR REPLACE INTO deferred VALUES (?,?,?,?,?,?,?)", self._deferrals)
            self._pending.clear()
            self._cleared.clear()
            self._deferrals.clear()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        """Commit what is pending (on every way out of a run, signals included) and close.

        The pipeline commits before it writes the summary, so a failure there is in the summary; one here
        comes after the run has already failed, and is logged rather than raised over that first error.
        """
        try:
            self.commit()
        except JournalError as exc:
            log.error("journal.commit_failed", error=str(exc),
                      detail="the last verified uploads are not recorded; the next run uploads them again")
        finally:
            self.db.close()
            if self.scratch:
                shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)


class Stored:
    """One directory's stored files (Journal.stored): `get(key)` -> a Journal.STORED row or None.

    rows: the directory's rows by key, or None past DIRECTORY_ROWS; then `one(key)` reads each row."""

    def __init__(self, rows: Optional[dict], one: Callable[[str], Optional[tuple]]):
        self._rows = rows
        self._one = one

    def get(self, key: str) -> Optional[tuple]:
        return self._rows.get(key) if self._rows is not None else self._one(key)


def lock_run(state: Optional[str], source: bytes):
    """Hold an exclusive flock for (state file, source) for the life of the returned file; AlreadyRunning if taken.

    The lock file sits beside the state file (the temporary directory with --no-state). flock locks belong to
    the open file, so the kernel drops this one when the process exits in any way, kill -9 included: a
    crashed run never leaves a stale lock behind.
    """
    import fcntl
    import hashlib
    import tempfile

    from obsbatch.errors import AlreadyRunning, ConfigError

    directory = os.path.dirname(os.path.abspath(state)) if state else tempfile.gettempdir()
    name = hashlib.sha256((state or "").encode() + b"\0" + source).hexdigest()[:16]
    path = os.path.join(directory, f"obsbatch-{name}.lock")
    try:
        os.makedirs(directory, exist_ok=True)
        handle = open(path, "a+")
    except OSError as exc:
        raise ConfigError(f"cannot create the lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlreadyRunning(f"another obsbatch run is already backing up {display(source)} with this state file "
                             f"(lock {path}); this run did nothing") from None
    return handle


def open_journal(state: Optional[str], endpoint: str, bucket: str) -> Journal:
    """The Journal, or ConfigError with one sentence (an unwritable directory, a file that is not sqlite).

    With no state file (--no-state), a journal of this run alone in a temporary directory: nothing is
    compared with an earlier run, but the run's snapshot still learns each upload's version (issue #20).
    """
    import tempfile

    from obsbatch.errors import ConfigError

    scratch = state is None
    try:
        if scratch:
            state = os.path.join(tempfile.mkdtemp(prefix="obsbatch-run-"), "journal.db")
        return Journal(state, endpoint, bucket, scratch=scratch)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the state journal {state}: {exc}") from None

"""`obsbatch dump PATH`: one file of a snapshot to stdout, or a directory as a tar stream.

A file: its recorded version (GET with versionId, the SSE-C key if any), hashed as it streams; the last
chunk is written only once the whole has its recorded sha256 and size, so a mismatch (exit 1, one sentence)
never leaves a complete-looking file on stdout. A directory ('/' the whole snapshot): a POSIX (pax) tar
stream of everything beneath it, as `tar -x` restores it: owners (numeric), modes, mtimes to the
nanosecond, symlinks, hardlinks (a group's first name in the stream carries the bytes, the others link to
it), FIFOs and devices; a socket cannot be in a tar and is named and left out. Each file's bytes are checked
the same way before tar's last block of them is written; a mismatch ends the stream without tar's end
blocks, so `tar -x` reports it cut short.

Only stdout carries data: the log goes to stderr, and --summary json too.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import sys
import tarfile
from typing import Optional, Sequence

import structlog

from obsbatch import keys, snapshot
from obsbatch.commands import history
from obsbatch.errors import ExitCode, ObsbatchError
from obsbatch.models import display, undisplay

log = structlog.get_logger()

DESCRIPTION = ("Print a file of a snapshot (default: the latest) to stdout, checked against its sha256 as it "
               "streams, or a directory as a tar stream. Exit 0 printed, 1 PATH is not in the snapshot, an entry "
               "failed its check or bytes did not match their sha256 (stdout is then not a complete file or "
               "archive), 2 usage, access or no such snapshot.")
#: Bytes read from the store at a time (and so held back until the file is checked).
CHUNK = 1 << 20


class ContentMismatch(ObsbatchError):
    """The bytes the store gave are not the ones the snapshot recorded: exit 1."""

    exit_code = ExitCode.PARTIAL


def main(argv: Sequence[str], started: float) -> int:
    return history.main("dump", argv, started, DESCRIPTION, _dump)


def _dump(config, reader: history.History) -> dict:
    from obsbatch.s3 import history as reading

    record, loaded, top, rel = reader.at_path(config)
    out = sys.stdout.buffer
    source = _Source(reader, record)
    if top[snapshot.TYPE] == snapshot.FILE:
        for chunk in source.checked(rel, top):
            out.write(chunk)
        out.flush()
        return {"snapshot": record["id"], "path": config.path, "files": 1, "bytes": top[snapshot.SIZE]}
    if top[snapshot.TYPE] != snapshot.DIRECTORY:
        raise history.NothingMatched(f"{config.path!r} in the snapshot {record['id']} is a "
                                     f"{history.TYPE_NAMES.get(top[snapshot.TYPE])}, not a file or a directory; "
                                     "ls shows it")
    listed = reading.beneath(loaded, top, rel, True, reader.budget([record]), reader.on_damaged)
    counts = _Archive(out, source, rel).write(top, listed)
    out.flush()
    return {"snapshot": record["id"], "path": config.path, **counts}


class _Source:
    """The recorded bytes of a snapshot's files, read from the store and checked."""

    def __init__(self, reader: history.History, record: dict):
        self.reader = reader
        self.prefix = reader.store.prefix
        self.encode = keys.encoder(record)

    def checked(self, rel: bytes, entry: list):
        """The file's bytes in chunks; the last only after all of them have the recorded sha256 and size
        (ContentMismatch otherwise, the last chunk never given)."""
        store = self.reader.store
        key = self.prefix + self.encode(rel)
        want_size, want_sha = entry[snapshot.SIZE], entry[snapshot.CONTENT]
        with self.reader.errors(f"read {key} (version {entry[snapshot.VERSION] or 'current'})"):
            body = self.reader.client.get_object(Bucket=store.bucket, Key=key,
                                                 **store.reading.read_params(entry[snapshot.VERSION]))["Body"]
            digest, seen, held = hashlib.sha256(), 0, b""
            try:
                # One byte more than recorded is enough to know the object is not the file.
                while True:
                    chunk = body.read(min(CHUNK, want_size + 1 - seen))
                    if not chunk:
                        break
                    seen += len(chunk)
                    digest.update(chunk)
                    if held:
                        yield held
                    held = chunk
                    if seen > want_size:
                        break
            finally:
                body.close()
        if seen != want_size or digest.hexdigest() != want_sha:
            raise ContentMismatch(f"the bytes of {display(rel)} in the store are not those the snapshot recorded "
                                  f"({'size differs' if seen != want_size else 'sha256 differs'}: replaced or "
                                  "altered since, or a bucket without versioning); the output is incomplete")
        if held:
            yield held


class _ChunkReader:
    """A file object over _Source.checked, for tarfile (which reads exactly the member's size)."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


class _Archive:
    """A directory of a snapshot as a pax tar stream; member names relative to the directory's parent (dump
    of `etc/nginx` gives `nginx/...`; of the root, the entries themselves)."""

    _KINDS = {snapshot.FIFO: tarfile.FIFOTYPE, snapshot.CHAR_DEVICE: tarfile.CHRTYPE,
              snapshot.BLOCK_DEVICE: tarfile.BLKTYPE}

    def __init__(self, out, source: _Source, top_rel: bytes):
        self.source = source
        self.top_rel = top_rel
        self.base = top_rel.rpartition(b"/")[0]
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                                errors="surrogateescape")
        #: The member name of each hardlink group's first name in the stream, which its other names link to.
        self.first_names: dict = {}

    def write(self, top: list, listed) -> dict:
        counts = {"files": 0, "bytes": 0, "entries": 0, "left_out": 0}
        if self.top_rel:  # not the root: the directory itself first
            listed = itertools.chain([(self.top_rel, top)], listed)
        for rel, entry in listed:
            name = rel[len(self.base) + 1:] if self.base else rel
            member = self._member(name, entry)
            if member is None:
                counts["left_out"] += 1
                log.warning("dump.left_out", path=display(rel), detail="a socket cannot be in a tar stream")
                continue
            if member.type == tarfile.REGTYPE:
                self.tar.addfile(member, _ChunkReader(self.source.checked(rel, entry)))
                counts["files"] += 1
                counts["bytes"] += member.size
            else:
                self.tar.addfile(member)
            counts["entries"] += 1
        self.tar.close()  # tar's end blocks: only after every member was written whole
        return counts

    def _member(self, name: bytes, entry: list) -> Optional[tarfile.TarInfo]:
        kind = entry[snapshot.TYPE]
        member = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
        member.mode, member.uid, member.gid = entry[snapshot.MODE], entry[snapshot.UID], entry[snapshot.GID]
        member.uname = member.gname = ""
        mtime_ns = entry[snapshot.MTIME]
        member.mtime = mtime_ns / 1e9
        if mtime_ns >= 0:  # to the nanosecond: a float's str() keeps only about a tenth of a microsecond
            member.pax_headers = {"mtime": f"{mtime_ns // 1_000_000_000}.{mtime_ns % 1_000_000_000:09d}"}
        # Extended attributes (ACLs and capabilities among them) as GNU tar and star write them, which
        # `tar -x --xattrs --xattrs-include='*'` restores; the value's bytes kept through surrogateescape.
        for attribute, value in sorted(snapshot.xattrs(entry).items()):
            member.pax_headers[f"SCHILY.xattr.{attribute}"] = base64.b64decode(value).decode("utf-8",
                                                                                          "surrogateescape")
        if kind == snapshot.FILE:
            group = entry[snapshot.LINK]
            if group and group in self.first_names:
                member.type, member.linkname = tarfile.LNKTYPE, self.first_names[group]
                return member
            if group:
                self.first_names[group] = member.name
            member.type, member.size = tarfile.REGTYPE, entry[snapshot.SIZE]
        elif kind == snapshot.DIRECTORY:
            member.type = tarfile.DIRTYPE
        elif kind == snapshot.SYMLINK:
            member.type = tarfile.SYMTYPE
            member.linkname = undisplay(entry[snapshot.CONTENT]).decode("utf-8", "surrogateescape")
        elif kind in self._KINDS:
            member.type = self._KINDS[kind]
            if kind != snapshot.FIFO:
                rdev = int(entry[snapshot.CONTENT])
                member.devmajor, member.devminor = os.major(rdev), os.minor(rdev)
        else:
            return None
        return member

"""The snapshot's cost at scale, measured on obsbatch's own code (issue #20): a synthetic tree of N files in
directories of about 20 (names, modes, owners, mtimes, sha256s and version ids as a real host has them),
journaled as if uploaded; then, each in its own process so each peak is its own:

- write: the walk's records (stages.snapshot.Recorder), the trees built from them and the journal
  (stages.snapshot.build) into a pack: seconds, pack bytes, bytes per file, peak RSS;
- rewrite: the same with one file changed in 1 % of the directories: the trees and bytes a nightly run adds;
- restore: the pack indexed (snapshot.Trees), every entry walked, the RestoreItems made and the directories,
  links and attributes set (commands.restore_tree.TreeRestore, the parent's side of a restore, with the
  downloads left out): seconds, peak RSS.

Prints one JSON object. Nothing here talks to a store; the downloads are the workers' and are bounded per
thread (README "Memory").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PER_DIRECTORY = 20
WORDS = ("report", "invoice", "backup", "export", "photo", "scan", "draft", "ledger", "notes", "archive")


def fake_stat(mode: int, size: int, mtime_ns: int, ino: int, nlink: int = 1) -> os.stat_result:
    # os.stat_result from a 10-tuple, plus the *_ns fields a real stat carries (by index 16..18).
    fields = [mode, ino, 64769, nlink, 1000, 1000, size, mtime_ns // 10**9, mtime_ns // 10**9, mtime_ns // 10**9]
    extra = {"st_atime_ns": mtime_ns, "st_mtime_ns": mtime_ns, "st_ctime_ns": mtime_ns, "st_rdev": 0}
    return os.stat_result(fields, extra)


def tree(files: int, seed: int, changed_every: int = 0):
    """(rel dir, [(name, stat, target)]) per directory, deepest-first order not required; and journal rows."""
    import stat as statmod

    rng = random.Random(seed)
    directories = max(1, files // PER_DIRECTORY)
    ino = 1000
    for d in range(directories):
        rel = f"home/user{d // 1000:03d}/project{(d // 50) % 20:02d}/dir{d:06d}".encode()
        entries = []
        for f in range(PER_DIRECTORY):
            ino += 1
            name = f"{rng.choice(WORDS)}-{d:06d}-{f:02d}.{rng.choice(('pdf', 'txt', 'jpg', 'xlsx'))}".encode()
            mtime = 1_700_000_000_000_000_000 + rng.randrange(10**15)
            if changed_every and d % changed_every == 0 and f == 0:
                mtime += 1
            entries.append((name, fake_stat(statmod.S_IFREG | 0o640, rng.randrange(1, 1 << 20), mtime, ino)))
        yield rel, entries


def parents(rel: bytes):
    parts = rel.split(b"/")
    return [b"/".join(parts[:i]) for i in range(len(parts))]


def write(args) -> dict:
    import stat as statmod

    from obsbatch import keys, snapshot
    from obsbatch.stages import journal as journal_mod
    from obsbatch.stages.snapshot import Recorder, build

    work = Path(args.work)
    journal = journal_mod.Journal(str(work / "journal.db"), "e", "b")
    rng = random.Random(1)
    if not (work / "journaled").exists():
        rows = []
        for rel, entries in tree(args.files, 7):
            for name, st in entries:
                key = "p/" + keys.encode(rel + b"/" + name)
                rows.append(("e", "b", key, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino,
                             hashlib.sha256(key.encode()).hexdigest(), "etag", 0.0,
                             "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(32))))
            if len(rows) > 50000:
                journal.db.executemany(f"INSERT INTO uploads ({journal_mod._UPLOAD_COLUMNS}) VALUES "
                                       "(?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                rows.clear()
        journal.db.executemany(f"INSERT INTO uploads ({journal_mod._UPLOAD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                               rows)
        (work / "journaled").write_text("1")
    started = time.perf_counter()
    recorder = Recorder()
    dir_stat = fake_stat(statmod.S_IFDIR | 0o755, 4096, 1_700_000_000_000_000_000, 1)
    pending = {}
    for rel, entries in tree(args.files, 7, changed_every=args.changed_every):
        recorder(rel, [(n, st, None) for n, st in entries])
        for parent in parents(rel):
            child = rel.split(b"/")[len(parent.split(b"/")) - (0 if parent else 1)] if parent else rel.split(b"/")[0]
            pending.setdefault(parent, set()).add(child)
    for parent, children in pending.items():  # the directories that hold only directories
        recorder(parent, [(c, dir_stat, None) for c in sorted(children)])
    pack = snapshot.PackWriter()
    built = build(recorder, journal, "p/", pack, args.pack_name)
    journal.record_snapshot("p/", args.pack_name, "head", built.totals.files, args.pack_name, built.new_trees,
                            recorder.rebuilt())
    seconds = time.perf_counter() - started
    handle, _, _ = pack.finished()
    with open(work / args.pack_name, "wb") as out:
        shutil.copyfileobj(handle, out)
    return {"files": built.totals.files, "directories": built.totals.directories + 1, "new_trees": len(built.new_trees),
            "pack_bytes": pack.size, "bytes_per_file": round(pack.size / built.totals.files, 1), "seconds": round(seconds, 2),
            "root": built.root, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def restore(args) -> dict:
    from obsbatch import snapshot
    from obsbatch.commands.restore import RestoreSummary
    from obsbatch.commands.restore_tree import TreeRestore

    work = Path(args.work)
    started = time.perf_counter()
    trees = snapshot.Trees()
    for name in args.packs:
        trees.add_pack(open(work / name, "rb"))

    class Config:  # the RestoreConfig fields TreeRestore reads
        restore_dry_run = False
        overwrite = False

    target = Path(tempfile.mkdtemp(dir=args.work))
    summary = RestoreSummary()
    restorer = TreeRestore(Config(), {"root": args.root, "prefix": "p/"}, trees, os.fsencode(str(target)), summary, None)
    items = sum(1 for _ in restorer.items())
    restorer.finish()
    seconds = time.perf_counter() - started
    shutil.rmtree(target)
    return {"entries": summary.listed, "file_items": items, "seconds": round(seconds, 2),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def child(phase: str, **options) -> dict:
    argv = [sys.executable, __file__, "--phase", phase]
    for key, value in options.items():
        for one in (value if isinstance(value, list) else [value]):
            argv += [f"--{key.replace('_', '-')}", str(one)]
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--phase", choices=("all", "write", "restore"), default="all")
    parser.add_argument("--work", default="")
    parser.add_argument("--changed-every", type=int, default=0)
    parser.add_argument("--pack-name", default="pack-1")
    parser.add_argument("--packs", action="append", default=[])
    parser.add_argument("--root", default="")
    args = parser.parse_args()
    if args.phase == "write":
        print(json.dumps(write(args)))
        return
    if args.phase == "restore":
        print(json.dumps(restore(args)))
        return
    work = tempfile.mkdtemp(prefix="obsbatch-snapshot-scale-")
    try:
        first = child("write", files=args.files, work=work, pack_name="pack-1")
        again = child("write", files=args.files, work=work, pack_name="pack-2", changed_every=100)
        back = child("restore", files=args.files, work=work, packs=["pack-1", "pack-2"], root=again["root"])
        per_million = 1_000_000 / first["files"]
        print(json.dumps({"first_snapshot": first, "one_percent_of_directories_changed": again, "restore": back,
                          "first_snapshot_mib_per_million_files": round(first["pack_bytes"] * per_million / 2**20, 1),
                          "nightly_mib_per_million_files": round(again["pack_bytes"] * per_million / 2**20, 2)},
                         indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

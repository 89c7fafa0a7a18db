import os
import sqlite3

import pytest

from obsbatch.errors import AlreadyRunning
from obsbatch.stages.journal import Journal, default_path, lock_run
from obsbatch.models import Candidate, Kind, Outcome, Reason, WorkItem


def item_and_stat(path):
    st = os.stat(path)
    item = WorkItem(path=os.fsencode(path), display=str(path), key="p/" + path.name, size=st.st_size,
                    mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, dev=st.st_dev, ino=st.st_ino)
    return item, st


def setup(tmp_path, data: bytes):
    """A file, its WorkItem and stat, and a journal for destination (e, b)."""
    f = tmp_path / "f"
    f.write_bytes(data)
    item, st = item_and_stat(f)
    return f, item, st, Journal(str(tmp_path / "state.db"), "e", "b")


def uploaded(journal, item, path):
    journal.record(item, Outcome(Kind.UPLOADED, str(path), key=item.key, sha256="ab", etag="cd", ended=1.0))
    journal.commit()


def unchanged(journal, path, key):
    """Does the journal skip this file as unchanged since its last verified upload?"""
    [out] = journal.filter([Candidate(os.fsencode(path), os.fsencode(path.name), key, os.stat(path))])
    return isinstance(out, Outcome) and out.reason is Reason.UNCHANGED


def test_only_verified_uploads_are_recorded_and_ctime_is_part_of_the_fingerprint(tmp_path):
    f, item, st, journal = setup(tmp_path, b"one")
    journal.record(item, Outcome(Kind.FAILED, str(f), key=item.key))
    journal.record(item, Outcome(Kind.DEFERRED, str(f), key=item.key, reason=Reason.CHANGED))
    journal.commit()
    assert not unchanged(journal, f, item.key)
    uploaded(journal, item, f)
    assert unchanged(journal, f, item.key)
    old = st.st_mtime_ns
    f.write_bytes(b"two")  # same size; mtime put back: only ctime tells
    os.utime(f, ns=(old, old))
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == old
    assert not unchanged(journal, f, item.key)
    other = Journal(str(tmp_path / "state.db"), "e", "other-bucket")  # destinations never mix
    uploaded(journal, item_and_stat(f)[0], f)
    assert unchanged(journal, f, item.key) and not unchanged(other, f, item.key)
    journal.close()
    other.close()


def test_a_deferral_lasts_until_an_upload_or_a_complete_walk_that_does_not_defer_it(tmp_path):
    f, item, st, journal = setup(tmp_path, b"x")
    deferred = Outcome(Kind.DEFERRED, str(f), key=item.key, reason=Reason.TOO_NEW)
    other = Outcome(Kind.DEFERRED, "elsewhere", key="q/other", reason=Reason.TOO_NEW)
    assert journal.deferral(deferred, 100.0) == (100.0, 1)
    journal.deferral(other, 100.0)
    journal.close()
    journal = Journal(str(tmp_path / "state.db"), "e", "b")  # the next run
    assert journal.deferral(deferred, 200.0) == (100.0, 2)  # carried over: first seen in the run before
    assert journal.end_deferrals_not_seen("p/") == 0  # deferred by this run: kept
    uploaded(journal, item, f)
    journal.close()
    journal = Journal(str(tmp_path / "state.db"), "e", "b")
    assert journal.deferral(deferred, 300.0) == (300.0, 1)  # the upload ended it: it starts afresh
    journal.close()
    journal = Journal(str(tmp_path / "state.db"), "e", "b")  # a run that does not defer it
    assert journal.end_deferrals_not_seen("p/") == 1  # ... ends it, and leaves other prefixes alone
    assert journal.deferral(other, 400.0) == (100.0, 2)
    journal.close()


def test_filter_turns_unchanged_candidates_into_skips(tmp_path):
    f, item, st, journal = setup(tmp_path, b"x")
    uploaded(journal, item, f)
    g = tmp_path / "g"
    g.write_bytes(b"y")
    cands = [Candidate(os.fsencode(f), b"f", "p/f", st), Candidate(os.fsencode(g), b"g", "p/g", os.stat(g))]
    out = list(journal.filter(cands))
    assert out[0].kind is Kind.SKIPPED and out[0].reason is Reason.UNCHANGED
    assert out[1] is cands[1]
    journal.close()


def test_a_journal_from_before_issue_11_gets_the_run_column_and_its_old_deferrals_can_end(tmp_path):
    db = sqlite3.connect(str(tmp_path / "state.db"))
    db.execute("CREATE TABLE deferred (endpoint TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL, "
               "first_seen REAL NOT NULL, count INTEGER NOT NULL, reason TEXT NOT NULL, "
               "PRIMARY KEY (endpoint, bucket, key)) WITHOUT ROWID")
    db.execute("INSERT INTO deferred VALUES ('e', 'b', 'p/gone', 1.0, 3, 'too_new')")
    db.commit()
    db.close()
    journal = Journal(str(tmp_path / "state.db"), "e", "b")
    assert journal.end_deferrals_not_seen("p/") == 1
    journal.close()


def test_uncommitted_rows_are_lost_not_wrong(tmp_path):
    f, item, st, journal = setup(tmp_path, b"x")
    journal.record(item, Outcome(Kind.UPLOADED, str(f), key=item.key, sha256="", etag="", ended=1.0))
    # no commit: as if killed now
    reader = sqlite3.connect(str(tmp_path / "state.db"))
    assert reader.execute("SELECT count(*) FROM uploads").fetchone() == (0,)
    journal.commit()
    assert reader.execute("SELECT count(*) FROM uploads").fetchone() == (1,)


def test_default_path_follows_systemd_then_xdg():
    assert default_path({"STATE_DIRECTORY": "/var/lib/obsbatch:/var/lib/x"}) == "/var/lib/obsbatch/obsbatch.db"
    assert default_path({"XDG_STATE_HOME": "/home/u/.st"}) == "/home/u/.st/obsbatch/obsbatch.db"


def test_lock_is_per_state_file_and_source(tmp_path):
    state = str(tmp_path / "state.db")
    held = lock_run(state, b"/src/a")
    try:
        with pytest.raises(AlreadyRunning, match="another obsbatch run is already backing up /src/a"):
            lock_run(state, b"/src/a")
        lock_run(state, b"/src/b").close()  # another source: fine
        lock_run(str(tmp_path / "other.db"), b"/src/a").close()  # another state file: fine
    finally:
        held.close()
    lock_run(state, b"/src/a").close()  # released with its file


def test_a_file_new_under_its_key_or_only_chmodded_gets_the_upload_that_may_hold_its_bytes(tmp_path):
    """Journal._copy_source: its own key's upload when only the ctime moved; else the same size, mtime and
    inode (a rename); else any of the same size and mtime (a copy that kept its mtime); nothing for an
    empty file, a file of another size or mtime, or one the journal records unchanged. The guard counts a
    file new under its key with a journaled inode as moved, not one that only shares a size and mtime."""
    journal = Journal(str(tmp_path / "state.db"), "e", "b")
    rows = {"p/a": (10, 5, 50, 1, 7), "p/b": (10, 5, 50, 1, 8), "p/c": (20, 5, 50, 1, 9), "p/e": (0, 5, 50, 1, 10)}
    for key, (size, mtime, ctime, dev, ino) in rows.items():
        item = WorkItem(path=b"/x", display="x", key=key, size=size, mtime_ns=mtime, ctime_ns=ctime, dev=dev, ino=ino)
        journal.record(item, Outcome(Kind.UPLOADED, "x", key=key, sha256="sha-" + key, etag="etag-" + key,
                                     version_id="v-" + key, ended=1.0))
    journal.commit()

    def source(key, size, mtime, ctime, ino):
        st = os.stat_result((0o100644, ino, 1, 1, 0, 0, size, 0, 0, 0, 0, 0, 0, 0, mtime, ctime))
        [out] = journal.filter([Candidate(b"/x", b"x", key, st)])
        return out if isinstance(out, Outcome) else out.copy_source

    assert source("p/a", 10, 5, 51, 7) == ("p/a", "v-p/a", "etag-p/a", "sha-p/a")  # chmod: ctime alone
    assert source("q/moved", 10, 5, 51, 8).key == "p/b"  # renamed: its inode
    assert source("q/copy", 10, 5, 60, 99).key in ("p/a", "p/b")  # cp -a: size and mtime only
    assert source("q/other", 10, 6, 60, 8) is None and source("q/other", 11, 5, 60, 8) is None
    assert source("q/empty", 0, 5, 51, 10) is None
    assert source("p/c", 20, 5, 50, 9).reason is Reason.UNCHANGED
    assert source("p/a", 10, 6, 51, 7) is None  # rewritten: another mtime, and no other upload has it
    assert journal.known_moved == 1  # q/moved; not q/copy
    journal.close()

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

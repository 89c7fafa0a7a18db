"""The dispatcher with the real upload pool against the real SeaweedFS, in this process: a stop signal that
lands while the walk is making an item (issue #11, defect 3)."""

import os
import signal

import pytest

from obsbatch.engine import pool
from obsbatch.stages.after_upload import AfterUpload
from obsbatch.commands.backup import parse
from obsbatch.engine.dispatch import Dispatch, plan_only
from obsbatch.models import Candidate, Kind, Reason
from obsbatch.stages.plan import work_item
from obsbatch.s3.remote import Remote
from obsbatch.reporting.summary import Summary
from obsbatch.engine.settings import WorkerSettings
from obsbatch.engine.shutdown import Shutdown
from tests.conftest import make_tree, objects, server_args


def _items(root, prefix, names, signal_at):
    """WorkItems for real files, as the stages make them; SIGTERM to this process while making item `signal_at`."""
    for n, name in enumerate(names):
        if n == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs right here, before the item is yielded
        path = root / name
        yield work_item(Candidate(os.fsencode(path), name.encode(), prefix + name, os.stat(path)))


@pytest.fixture
def reported():
    """A Summary and the Outcomes it counted, in order."""
    summary = Summary()
    outcomes = []
    summary.observers.append(outcomes.append)
    return summary, outcomes


def test_dry_run_reports_the_item_a_signal_interrupted_the_making_of(tmp_path, reported):
    summary, outcomes = reported
    names = [f"f{n}.txt" for n in range(10)]
    make_tree(tmp_path, {name: b"x" for name in names})
    shutdown = Shutdown(pool.context())
    with shutdown.installed():
        plan_only(_items(tmp_path, "p/", names, signal_at=4), shutdown, summary)
    # Items 0..4 were taken from the walk, so each has an Outcome; 5.. were never made.
    assert [o.key for o in outcomes] == [f"p/f{n}.txt" for n in range(5)]
    assert {o.kind for o in outcomes} == {Kind.PLANNED}
    assert shutdown.exit_code == 143


def test_upload_reports_the_item_a_signal_interrupted_the_making_of(tmp_path, s3, s3server, prefix, monkeypatch,
                                                                     reported):
    summary, outcomes = reported
    for name, value in s3server.env().items():
        monkeypatch.setenv(name, value)
    src = tmp_path / "src"
    names = [f"f{n}.txt" for n in range(12)]
    make_tree(src, {name: name.encode() for name in names})
    config = parse(["--source", str(src), *server_args(s3server, prefix), "--max-concurrent", "2",
                    "--log-format", "json"], {})
    ctx = pool.context()
    shutdown = Shutdown(ctx, stop_timeout=60)
    uploads = pool.UploadPool(ctx, config.transfer, WorkerSettings.for_backup(config), shutdown.workers_flag,
                              pool.Gauges(ctx, config.transfer.processes))
    preflight = Remote(config, uploads.check_destination).checked
    with shutdown.installed():
        Dispatch(uploads, shutdown, summary, AfterUpload(None, None), preflight, grace=5).run(
            _items(src, prefix, names, signal_at=7))
    assert [o.key for o in outcomes] and sorted(o.key for o in outcomes) == sorted(
        f"{prefix}f{n}.txt" for n in range(8))  # items 0..7 taken: one Outcome each, none for 8..
    by_key = {o.key: o for o in outcomes}
    taken_last = by_key[f"{prefix}f7.txt"]
    assert (taken_last.kind, taken_last.reason) == (Kind.DEFERRED, Reason.INTERRUPTED)  # taken, never sent
    stored = objects(s3, s3server.bucket, prefix)
    assert {o.key[len(prefix):] for o in outcomes if o.kind is Kind.UPLOADED} == set(stored)
    assert all(o.kind is Kind.UPLOADED or o.reason is Reason.INTERRUPTED for o in outcomes)

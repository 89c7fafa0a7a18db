"""What a worker's batch returns when an upload raises instead of returning an Outcome (issue #11, defect 5)."""

import pytest

from obsbatch.models import Kind, Outcome, WorkItem
from obsbatch.engine.worker import InFlight, UploadThreads, run_batch


def _item(n: int) -> WorkItem:
    return WorkItem(path=f"/src/f{n}".encode(), display=f"/src/f{n}", key=f"p/f{n}", size=n, mtime_ns=1, ctime_ns=1,
                    dev=1, ino=n)


def _upload(item: WorkItem) -> Outcome:
    if item.key == "p/f2":
        raise RuntimeError("a bug in the upload path")
    return Outcome(Kind.UPLOADED, item.display, key=item.key, size=item.size)


@pytest.mark.parametrize("threads", [None, 3], ids=["serial", "upload-threads"])
def test_an_upload_that_raises_becomes_a_failed_outcome_and_the_rest_of_the_batch_is_kept(threads):
    items = [_item(n) for n in range(6)]
    in_flight = InFlight(None, workers=1, fixed=threads or 1)
    outcomes = run_batch(items, _upload, UploadThreads(threads, in_flight) if threads else None, in_flight)
    assert all(isinstance(o, Outcome) for o in outcomes)  # never an exception object where an Outcome belongs
    assert [o.key for o in outcomes] == [i.key for i in items]  # one each, in order
    failed = outcomes[2]
    assert failed.kind is Kind.FAILED and failed.error_type == "RuntimeError"
    assert "a bug in the upload path" in failed.message and failed.size == 2
    assert [o.kind for o in outcomes[:2] + outcomes[3:]] == [Kind.UPLOADED] * 5

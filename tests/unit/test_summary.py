"""Every figure a summary states is true (issue #18): "in flight" only when something was sent, "in the log
above" only when it is there, the seconds from the command's start; restore's and verify's summaries too."""

import time

from obsbatch.commands.restore import RestoreSummary
from obsbatch.commands.verify import VerifySummary
from obsbatch.models import UNAVAILABLE, Kind, Outcome, Reason
from obsbatch.reporting.summary import Summary


def test_in_flight_is_said_only_of_a_run_that_sent_something():
    idle = Summary(concurrency=8, concurrency_mode="auto")
    idle.add(Outcome(Kind.SKIPPED, "a", reason=Reason.SYMLINK))
    assert "in flight" not in idle.human()
    busy = Summary(concurrency=8, concurrency_mode="auto")
    busy.add(Outcome(Kind.UPLOADED, "b", size=10, attempts=1))
    assert "8 in flight (auto)" in busy.human()


def test_the_log_is_pointed_to_only_for_failures_it_holds():
    down = Summary()
    down.add(Outcome(Kind.FAILED, "a", error_type=UNAVAILABLE, message="not sent"))  # logged at debug only
    assert "in the log above" not in down.human() and "nothing was sent" in down.human()
    refused = Summary()
    refused.add(Outcome(Kind.FAILED, "b", error_type="AccessDenied", message="PutObject refused: AccessDenied"))
    assert "each is in the log above" in refused.human()


def test_seconds_run_from_the_commands_start_not_the_summarys():
    started = time.time() - 4.9  # a /proc scan and a pre-flight took 4.9 s before the first file
    for summary in (Summary(started=started), RestoreSummary(started=started), VerifySummary(started=started)):
        assert summary.as_dict()["seconds"] >= 4.9, type(summary).__name__
    assert " in 4.9 s" in Summary(started=started).human() or " in 5.0 s" in Summary(started=started).human()


def test_verify_counts_every_outcome_once_and_says_what_went_wrong():
    summary = VerifySummary()
    summary.add(Outcome(Kind.VERIFIED, "k1", key="k1", size=100, sha256="ab" * 32))
    summary.add(Outcome(Kind.VERIFIED, "k2", key="k2"))
    summary.add(Outcome(Kind.FAILED, "k3", key="k3", error_type="Missing", message="not in the store"))
    summary.add(Outcome(Kind.FAILED, "k4", key="k4", error_type="Different", message="size 1, expected 2"))
    summary.add(Outcome(Kind.FAILED, "k5", key="k5", error_type="AccessDenied", message="HeadObject refused"))
    summary.add(Outcome(Kind.DEFERRED, "k6", key="k6", reason=Reason.INTERRUPTED))
    report = summary.as_dict()
    assert (report["checked"], report["ok"], report["missing"], report["different"], report["failed"],
            report["read_back"], report["bytes_read"], report["interrupted"]) == (5, 2, 1, 1, 1, 1, 100, 1)
    assert report["exit_code"] == 1
    text = summary.human()
    assert "MISSING:   1" in text and "DIFFERENT: 1" in text and "FAILED:    1" in text and "stopped:   1" in text
    assert VerifySummary().exit_code == 1  # nothing checked: a mistyped prefix is not a pass

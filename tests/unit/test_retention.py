"""s3.retention.decide: restic's policy, on snapshot times, newest first; the newest always kept."""

from __future__ import annotations

import datetime

from obsbatch import snapshot
from obsbatch.s3.retention import Policy, decide


def records(*times: str) -> list:
    out = []
    for n, text in enumerate(times):
        moment = snapshot.parse_time(text)
        out.append({"id": snapshot.new_id(moment)[:-8] + f"{n:08x}", "time": text})
    return out


def kept(found, policy) -> list:
    return [one.record["time"] for one in decide(found, policy) if one.keep]


DAYS = [f"2026-11-{day:02d}T{hour:02d}:00:00Z" for day in range(1, 31) for hour in (3, 15)]


def test_keep_last_and_the_newest_always():
    assert kept(records(*DAYS), Policy(last=3)) == DAYS[::-1][:3]
    assert kept(records(*DAYS), Policy(within=0.0)) == DAYS[-1:]  # a policy that keeps none keeps the newest


def test_keep_daily_takes_the_newest_of_each_of_the_last_n_days():
    assert kept(records(*DAYS), Policy(daily=3)) == ["2026-11-30T15:00:00Z", "2026-11-29T15:00:00Z",
                                                    "2026-11-28T15:00:00Z"]


def test_restics_worked_example_weekly_and_monthly_add_up():
    """7 daily, 4 weekly, 3 monthly over 60 days of two snapshots a day: the days and the weeks overlap, as
    in restic's documentation; each snapshot kept says which rules keep it."""
    times = [(datetime.datetime(2026, 10, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(hours=12 * n))
             .strftime("%Y-%m-%dT%H:%M:%SZ") for n in range(122)]
    decided = decide(records(*times), Policy(daily=7, weekly=4, monthly=3))
    keep = [(one.record["time"], one.reasons) for one in decided if one.keep]
    assert [when for when, _ in keep] == [
        "2026-11-30T12:00:00Z", "2026-11-29T12:00:00Z", "2026-11-28T12:00:00Z", "2026-11-27T12:00:00Z",
        "2026-11-26T12:00:00Z", "2026-11-25T12:00:00Z", "2026-11-24T12:00:00Z", "2026-11-22T12:00:00Z",
        "2026-11-15T12:00:00Z", "2026-10-31T12:00:00Z"]
    # 2026-11-30 is the Monday of ISO week 49: week 48's newest is the 29th, which a day keeps too.
    assert keep[0][1] == ("latest", "daily 2026-11-30", "weekly 2026-W49", "monthly 2026-11")
    assert keep[1][1] == ("daily 2026-11-29", "weekly 2026-W48")
    assert keep[7][1] == ("weekly 2026-W47",)
    assert keep[-1][1] == ("monthly 2026-10",)


def test_keep_within_counts_from_the_newest_snapshot_not_now():
    assert kept(records(*DAYS), Policy(within=86400.0)) == DAYS[::-1][:3]


def test_a_listing_without_versions_keeps_every_key_a_snapshot_names():
    """A store without ListObjectVersions lists current objects with no version: one a snapshot names at some
    version may be that very version, so it is kept; a named version is kept, another version is not."""
    from obsbatch.s3.retention import Referenced

    referenced = Referenced()
    try:
        referenced.db.executemany("INSERT INTO refs VALUES (?,?)", [("p/a", "v1"), ("p/b", "")])
        assert referenced.holds("p/a", None) and referenced.holds("p/a", "v1")
        assert not referenced.holds("p/a", "v0") and not referenced.holds("p/c", None)
        assert referenced.holds("p/b", "null") and referenced.holds("p/b", "anything")
    finally:
        referenced.close()

"""Archive controls (issue #13): flags to headers, the SSE-C key, --bwlimit's rates and timetables, and the
--help groups. What the servers make of the headers is in tests/integration/test_archive.py."""

import argparse
import base64
import datetime
import hashlib
import os

import pytest

from obsbatch.commands import backup
from obsbatch.archive import ArchiveControls
from obsbatch.commands.backup import parse
from obsbatch.config import BackupConfig, bandwidth, flag_fields
from obsbatch.errors import UsageError
from obsbatch.engine.ratelimit import rate_at

BASE = ["--source", "/s", "--bucket", "b"]
MiB = 1024 * 1024


def test_every_flag_is_in_exactly_one_help_group():
    grouped = [name for _, names in BackupConfig.GROUPS for name in names]
    assert sorted(grouped) == sorted(f.name for f in flag_fields(BackupConfig))
    help_text = backup.build_parser().format_help()
    positions = [help_text.index(f"\n{title}:\n") for title, _ in BackupConfig.GROUPS]
    assert positions == sorted(positions)
    assert help_text.index("\n  --legal-hold") > help_text.index("\narchive controls:\n") > help_text.index("\n  --verify-remote")


def test_headers_and_botocore_params_say_the_same():
    config = parse(BASE + ["--object-lock-mode", "compliance", "--object-lock-retain", "30d", "--legal-hold",
                           "--sse", "aws:kms", "--sse-kms-key-id", "k-1", "--storage-class", "GLACIER_IR",
                           "--tag", "a=1", "--tag", "b c=d&e", "--metadata", "Team=ops"], {})
    controls = config.archive
    until = controls.retain_until(1_700_000_000.25)
    assert until == datetime.datetime.fromtimestamp(1_700_000_000 + 30 * 86400 + 1, datetime.timezone.utc)
    meta = {"sha256": "00", "team": "ops"}
    params, headers = controls.params(meta, until), controls.headers(meta, until)
    assert params == {"Metadata": meta, "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k-1",
                      "StorageClass": "GLACIER_IR", "Tagging": "a=1&b%20c=d%26e", "ObjectLockMode": "COMPLIANCE",
                      "ObjectLockRetainUntilDate": "2023-12-14T22:13:21Z", "ObjectLockLegalHoldStatus": "ON"}
    assert headers == {"x-amz-meta-sha256": "00", "x-amz-meta-team": "ops", "x-amz-server-side-encryption": "aws:kms",
                       "x-amz-server-side-encryption-aws-kms-key-id": "k-1", "x-amz-storage-class": "GLACIER_IR",
                       "x-amz-tagging": "a=1&b%20c=d%26e", "x-amz-object-lock-mode": "COMPLIANCE",
                       "x-amz-object-lock-retain-until-date": "2023-12-14T22:13:21Z",
                       "x-amz-object-lock-legal-hold": "ON"}
    assert not controls.etag_is_md5 and controls.locking


def test_posix_attributes_as_rclone_writes_them():
    st = os.stat_result((0o100640, 1, 2, 1, 1000, 1001, 5, 0, 0, 0))
    meta = ArchiveControls().object_metadata("ab", 1_600_000_000_000_000_001, st)
    assert meta == {"sha256": "ab", "mtime": "1600000000.000000001", "mode": "640", "uid": "1000", "gid": "1001"}
    assert ArchiveControls(preserve_attrs=False).object_metadata("ab", 1, st) == {"sha256": "ab"}


@pytest.mark.parametrize("form", ["raw", "base64"])
def test_the_customer_key_is_read_and_never_shown(tmp_path, form):
    key = bytes(range(32))
    path = tmp_path / "k"
    path.write_bytes(key if form == "raw" else base64.b64encode(key) + b"\n")
    config = parse(BASE + ["--sse-c-key-file", str(path), "--endpoint", "http://127.0.0.1:9000"], {})
    headers = config.archive.headers({}, None)
    assert headers["x-amz-server-side-encryption-customer-key"] == base64.b64encode(key).decode()
    assert headers["x-amz-server-side-encryption-customer-key-md5"] == base64.b64encode(hashlib.md5(key).digest()).decode()
    shown = repr(config) + repr(config.archive) + str(config.archive)
    assert base64.b64encode(key).decode() not in shown and repr(key) not in shown and key.hex() not in shown
    assert not config.archive.etag_is_md5


def test_a_bad_key_file_is_one_sentence_without_its_content(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(b"SECRET-" * 5)
    with pytest.raises(UsageError) as err:
        parse(BASE + ["--sse-c-key-file", str(path)], {})
    assert "256-bit key" in str(err.value) and "SECRET" not in str(err.value)


@pytest.mark.parametrize("endpoint, refused", [("http://backup.example.com", True), ("http://10.0.0.5:9000", True),
                                               ("http://127.0.0.1:9000", False), ("http://[::1]:9000", False),
                                               ("http://localhost:9000", False), ("https://obs.example.com", False)])
def test_the_customer_key_never_goes_over_plain_http_to_another_host(tmp_path, endpoint, refused):
    path = tmp_path / "k"
    path.write_bytes(os.urandom(32))
    args = BASE + ["--sse-c-key-file", str(path), "--endpoint", endpoint]
    if refused:
        with pytest.raises(UsageError, match="clear text"):
            parse(args, {})
    else:
        assert parse(args, {}).archive.customer_key is not None


@pytest.mark.parametrize("args, message", [
    (["--object-lock-mode", "GOVERNANCE"], "go together"),
    (["--object-lock-retain", "1d"], "go together"),
    (["--object-lock-mode", "FOREVER", "--object-lock-retain", "1d"], "not an Object Lock mode"),
    (["--sse-kms-key-id", "k"], "needs --sse aws:kms"),
    (["--sse", "des"], "not a server-side encryption"),
    (["--metadata", "sha256=x"], "writes x-amz-meta-sha256 itself"),
    (["--metadata", "MTIME=x"], "writes x-amz-meta-mtime itself"),
    (["--metadata", "novalue"], "KEY=VALUE"),
    (["--metadata", "name=café"], "printable ASCII"),
    (["--tag", "a=1", "--tag", "a=2"], "twice"),
    ([arg for i in range(11) for arg in ("--tag", f"t{i}=v")], "at most 10"),
    (["--storage-class", "COLD STORAGE"], "not a storage class"),
    (["--bwlimit", "fast"], "not a rate"),
    (["--bwlimit", "25:00,1M"], "timetable entry"),
])
def test_bad_archive_flags_are_one_sentence(args, message):
    with pytest.raises(UsageError, match=message):
        parse(BASE + args, {})


def test_archive_flags_from_the_environment():
    config = parse(BASE, {"OBSBATCH_TAG": "a=1,b=2", "OBSBATCH_LEGAL_HOLD": "1", "OBSBATCH_STORAGE_CLASS": "COLD",
                          "OBSBATCH_BWLIMIT": "08:00,4M 19:00,off", "OBSBATCH_NO_PRESERVE_ATTRS": "yes"})
    assert config.archive.tags == (("a", "1"), ("b", "2")) and config.legal_hold and config.storage_class == "COLD"
    assert config.transfer.bwlimit == ((8 * 60, 4 * MiB), (19 * 60, None)) and config.no_preserve_attrs


def test_bwlimit_units_are_rclones():
    assert bandwidth("4M") == ((0, 4 * MiB),)
    assert bandwidth("512") == ((0, 512 * 1024),)  # a plain number is KiB/s
    assert bandwidth("1.5G") == ((0, 1.5 * 1024 * MiB),)
    assert bandwidth("100B") == ((0, 100),)
    assert bandwidth("off") == ((0, None),)
    with pytest.raises(argparse.ArgumentTypeError):
        bandwidth("0")


def test_a_timetable_wraps_around_midnight():
    table = bandwidth("19:00,off 08:00,4M 12:30,1M")
    assert table == ((480, 4 * MiB), (750, MiB), (1140, None))
    assert rate_at(table, 7 * 60 + 59) is None  # before 08:00: still yesterday's 19:00 entry
    assert rate_at(table, 8 * 60) == 4 * MiB
    assert rate_at(table, 12 * 60 + 29) == 4 * MiB
    assert rate_at(table, 13 * 60) == MiB
    assert rate_at(table, 23 * 60) is None


def test_the_lock_read_back_compares_instants_not_zones():
    controls = ArchiveControls(lock_mode="COMPLIANCE", lock_retain=60, legal_hold=True)
    until = controls.retain_until(1_700_000_000)
    moscow = datetime.timezone(datetime.timedelta(hours=3))
    same_instant = until.astimezone(moscow)  # botocore hands dates in the local zone
    assert controls.lock_held({"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": same_instant,
                               "ObjectLockLegalHoldStatus": "ON"}, until) == ""
    early = same_instant - datetime.timedelta(seconds=1)
    missing = controls.lock_held({"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": early}, until)
    assert missing == ("retention COMPLIANCE until 2023-11-14T22:14:20Z (stored: COMPLIANCE until "
                       "2023-11-14T22:14:19Z), legal hold ON")
    assert controls.lock_held({}, until).startswith("retention COMPLIANCE until 2023-11-14T22:14:20Z (stored: none)")

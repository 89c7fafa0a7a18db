import pytest

from obsbatch.commands.backup import parse
from obsbatch.config import MiB, parse_size
from obsbatch.errors import UsageError

ORIGINAL = ("--source /sftp/export --bucket my-backups --prefix daily/ --endpoint "
            "https://obs.ru-moscow-1.hc.sbercloud.ru --region ru-moscow-1 --http-timeout 15 --max-concurrent 6 "
            "--debug info").split()


def test_original_command_line_verbatim():
    config = parse(ORIGINAL, {})
    assert config.source == "/sftp/export"
    assert config.store.bucket == "my-backups"
    assert config.store.prefix == "daily/"
    assert config.store.endpoint == "https://obs.ru-moscow-1.hc.sbercloud.ru"
    assert config.store.region == "ru-moscow-1"
    assert config.transfer.http_timeout == 15.0
    assert config.transfer.max_concurrent == 6
    assert config.output.debug == "info"


def test_defaults():
    config = parse(["--source", "/s", "--bucket", "b"], {})
    assert (config.min_age, config.transfer.retries, config.store.checksum_mode) == (2.0, 5, "when_required")
    assert (config.multipart_threshold, config.multipart_chunksize) == (64 * MiB, 16 * MiB)
    assert config.include == () and config.exclude == () and config.dry_run is False


def test_every_flag_falls_back_to_environment():
    env = {"OBSBATCH_SOURCE": "/env/src", "OBSBATCH_BUCKET": "envbucket", "OBSBATCH_MAX_CONCURRENT": "3",
           "OBSBATCH_DRY_RUN": "yes", "OBSBATCH_FOLLOW_SYMLINKS": "0", "OBSBATCH_EXCLUDE": "*.tmp,*.part",
           "OBSBATCH_MULTIPART_THRESHOLD": "8MiB", "OBSBATCH_FD_CHECK": "strict", "OBSBATCH_MIN_AGE": "0.5"}
    config = parse([], env)
    assert config.source == "/env/src" and config.store.bucket == "envbucket"
    assert config.transfer.max_concurrent == 3 and config.dry_run is True and config.follow_symlinks is False
    assert config.exclude == ("*.tmp", "*.part")
    assert config.multipart_threshold == 8 * MiB
    assert config.fd_check == "strict" and config.min_age == 0.5


def test_max_concurrent_is_auto_by_default_and_a_number_fixes_it():
    auto = parse(["--source", "/s", "--bucket", "b"], {})
    assert auto.transfer.max_concurrent is None and auto.transfer.max_concurrent_limit == 256 and auto.transfer.most_in_flight == 256
    limited = parse(["--source", "/s", "--bucket", "b", "--max-concurrent-limit", "32"], {})
    assert limited.transfer.max_concurrent is None and limited.transfer.most_in_flight == 32
    fixed = parse(["--source", "/s", "--bucket", "b", "--max-concurrent", "6"], {"OBSBATCH_MAX_CONCURRENT": "auto"})
    assert fixed.transfer.max_concurrent == 6 and fixed.transfer.most_in_flight == 6
    # "auto" given on the command line is given: it beats the variable.
    assert parse(["--source", "/s", "--bucket", "b", "--max-concurrent", "auto"],
                 {"OBSBATCH_MAX_CONCURRENT": "6"}).transfer.max_concurrent is None


def test_command_line_beats_environment():
    env = {"OBSBATCH_SOURCE": "/env", "OBSBATCH_BUCKET": "envbucket", "OBSBATCH_EXCLUDE": "*.tmp",
           "OBSBATCH_MAX_CONCURRENT": "3"}
    config = parse(["--bucket", "clibucket", "--exclude", "*.log", "--max-concurrent", "9"], env)
    assert config.store.bucket == "clibucket" and config.exclude == ("*.log",) and config.transfer.max_concurrent == 9
    assert config.source == "/env"


def test_repeatable_flags():
    config = parse(["--source", "/s", "--bucket", "b", "--include", "*.db", "--include", "*.wal"], {})
    assert config.include == ("*.db", "*.wal")


@pytest.mark.parametrize("prefix,expected", [("daily", "daily/"), ("daily/", "daily/"), ("", ""), ("a/b", "a/b/")])
def test_prefix_gets_trailing_slash_like_aws_s3_sync(prefix, expected):
    assert parse(["--source", "/s", "--bucket", "b", "--prefix", prefix], {}).store.prefix == expected


@pytest.mark.parametrize("args,message", [
    (["--max-concurrent", "-1"], "--max-concurrent: '-1' must be from 1 to 1024, or 'auto'"),
    (["--max-concurrent", "two"], "'two' is neither 'auto' nor a whole number"),
    (["--max-concurrent-limit", "0"], "--max-concurrent-limit: '0' must be from 1 to 1024"),
    (["--max-concurrent", "99999999999"], "--max-concurrent: '99999999999' must be from 1 to 1024, or 'auto'"),
    (["--max-concurrent-limit", "5000"], "'5000' must be from 1 to 1024"),
    (["--http-timeout", "1e308"], "'1e308' must be more than 0 and at most 86400 seconds"),
    (["--stop-timeout", "1e9"], "at most 86400 seconds"),
    (["--min-age", "1e12"], "at most 31536000 seconds"),
    (["--max-rps", "1e-300"], "'1e-300' must be from 0.01 to 1000000 requests per second"),
    (["--max-rps", "1e300"], "must be from 0.01"),
    (["--retries", "1000"], "'1000' must be from 0 to 50"),
    (["--bwlimit", "0.000001K"], "must be from 1B to 1024T bytes per second"),
    (["--max-defer", "99999999d"], "is more than 100 years"),
    (["--object-lock-mode", "GOVERNANCE", "--object-lock-retain", "1e300d"], "is not a duration"),
    (["--multipart-chunksize", "12XB"], "'12XB' is not a size"),
    (["--multipart-chunksize", "1MiB"], "between 5MiB and 5GiB"),
    (["--multipart-threshold", "6GiB"], "at most 5GiB"),
    (["--endpoint", "ftp://host"], "must be an http:// or https:// URL"),
    (["--endpoint", "https://user:pw@host"], "must not contain credentials"),
    (["--endpoint", "https://host:99999"], "is not a valid URL"),
    (["--endpoint", "https://key:s3cret@host:99999"], "'https://***@host:99999' is not a valid URL"),  # not echoed
    (["--endpoint", "http://a\nb"], "'http://a\\nb'"),  # one line, whatever the value holds
    (["--http-timeout", "0"], "must be more than 0 and at most"),
    (["--min-age", "-3"], "must be at least 0 and at most"),
    (["--min-age", "nan"], "finite"),
    (["--debug", "loud"], "invalid choice"),
    (["--checksum-mode", "always"], "invalid choice"),
    (["--prefix", "/abs"], "must not start with '/'"),
    (["--prefix", "a/../b"], "'..' segment"),
    (["--prefix", "p1.obsbatch/"], "lies in 'p1.obsbatch/', obsbatch's own area beside the prefix 'p1/'"),
    (["--prefix", ".obsbatch/fleet/"], "obsbatch's own area beside the prefix ''"),
    (["--bucket", "bad bucket!"], "is not a valid bucket name"),
    (["--region", "ru moscow"], "is not a valid region name"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--upload-manifest"], "--upload-manifest needs --manifest PATH"),
    (["--upload-manifest", "--manifest", "m.jsonl"], "needs a --prefix"),
    (["--max-defer", "soon"], "is not a duration"),
    (["--verify-remote", "--no-state"], "cannot go with --no-state"),
])
def test_invalid_values_rejected_with_clear_message(args, message):
    base = {"--source": "/s", "--bucket": "b"}
    argv = [x for k, v in base.items() if k not in args for x in (k, v)] + args
    with pytest.raises(UsageError) as info:
        parse(argv, {})
    assert message in str(info.value)


def test_missing_required_names_flag_and_variable():
    with pytest.raises(UsageError, match=r"--bucket is required \(or OBSBATCH_BUCKET\)"):
        parse(["--source", "/s"], {})


def test_invalid_environment_value_names_the_variable():
    with pytest.raises(UsageError, match="OBSBATCH_RETRIES: 'many' is not a whole number"):
        parse(["--source", "/s", "--bucket", "b"], {"OBSBATCH_RETRIES": "many"})
    with pytest.raises(UsageError, match="OBSBATCH_DRY_RUN: 'perhaps' is not a boolean"):
        parse(["--source", "/s", "--bucket", "b"], {"OBSBATCH_DRY_RUN": "perhaps"})
    with pytest.raises(UsageError, match="OBSBATCH_LOG_FORMAT: invalid choice 'xml'"):
        parse(["--source", "/s", "--bucket", "b"], {"OBSBATCH_LOG_FORMAT": "xml"})


@pytest.mark.parametrize("text,value", [("64MiB", 64 * MiB), ("64MB", 64 * MiB), ("1048576", MiB), ("8m", 8 * MiB),
                                        ("1GiB", 1024 * MiB), ("5 KiB", 5 * 1024)])
def test_parse_size(text, value):
    assert parse_size(text) == value


# --- issue #18: no abbreviations, the nearest flag, a strict environment, one command line ---

@pytest.mark.parametrize("flag,nearest", [("--delete", "--delete-source"), ("--dry", "--dry-run"),
                                          ("--max-concurrency", "--max-concurrent")])
def test_no_flag_is_ever_abbreviated_and_the_nearest_is_named(flag, nearest):
    # argparse's prefix matching once took `--delete` (rsync's reflex) for --delete-source: data removed.
    with pytest.raises(UsageError) as info:
        parse(["--source", "/s", "--bucket", "b", flag], {})
    assert f"unrecognized arguments: {flag} (did you mean {nearest}?)" in str(info.value)


def test_restore_and_verify_flags_are_not_abbreviated_either():
    from obsbatch.commands import runner as commands

    with pytest.raises(UsageError, match=r"--overwr \(did you mean --overwrite\?\)"):
        commands.parse("restore", ["--bucket", "b", "--target", "/t", "--overwr"], {})
    with pytest.raises(UsageError, match="--read-dat"):
        commands.parse("verify", ["--bucket", "b", "--read-dat", "5"], {})


def test_an_unknown_obsbatch_variable_is_an_error_naming_the_nearest():
    from obsbatch import options as commands
    from obsbatch.options import check_environment

    known = commands.environment_names()
    with pytest.raises(UsageError, match=r"OBSBATCH_DRYRUN names no flag .*did you mean OBSBATCH_DRY_RUN\?"):
        check_environment({"OBSBATCH_DRYRUN": "1", "PATH": "/bin"}, known)
    # Another command's variable is known: one EnvironmentFile serves backup, restore and verify.
    check_environment({"OBSBATCH_TARGET": "/t", "OBSBATCH_READ_DATA": "5", "OBSBATCH_DRY_RUN": "1"}, known)


@pytest.mark.parametrize("argv,command,rest", [
    (["--source", "/s"], "backup", ["--source", "/s"]),
    (["backup", "--source", "/s"], "backup", ["--source", "/s"]),
    (["--debug", "info", "restore", "--target", "/t"], "restore", ["--debug", "info", "--target", "/t"]),
    (["--log-format=json", "--summary", "json", "verify"], "verify", ["--log-format=json", "--summary", "json"]),
    (["--source", "restore"], "backup", ["--source", "restore"]),  # a value, not a command word
    (["-q", "--no-progress", "verify", "--bucket", "b"], "verify", ["-q", "--no-progress", "--bucket", "b"]),
    (["-v", "--progress", "restore"], "restore", ["-v", "--progress"]),
])
def test_output_flags_may_come_before_the_command_word(argv, command, rest):
    from obsbatch.cli import split_command

    assert split_command(argv) == (command, rest)


@pytest.mark.parametrize("command", ["backup", "restore", "verify"])
def test_output_flags_mean_the_same_in_every_command(command):
    """-v/-q/--debug set the level (one of them), --progress/--no-progress the bar, the same in each command."""
    from obsbatch.commands import runner as commands

    base = {"backup": ["--source", "/s", "--bucket", "b"], "restore": ["--bucket", "b", "--target", "/t"],
            "verify": ["--bucket", "b"]}[command]

    def output(argv, environ=None):
        given = base + argv
        config = parse(given, environ or {}) if command == "backup" else commands.parse(command, given, environ or {})
        return config.output

    assert output([]).level == "info" and output([]).bar(True) and not output([]).bar(False)
    assert output(["-v"]).level == "debug" and output(["--verbose"]).traceback
    quiet = output(["-q"])
    assert quiet.level == "warn" and not quiet.bar(True) and not quiet.human_summary(True)
    assert output(["--debug", "error"]).level == "error"
    assert output(["--progress"]).bar(False) and not output(["--no-progress"]).bar(True)
    assert output([], {"OBSBATCH_PROGRESS": "1"}).bar(False) and output([], {"OBSBATCH_PROGRESS": ""}).progress is None
    assert output(["--progress"], {"OBSBATCH_PROGRESS": "0"}).bar(False)  # the command line beats the variable
    for argv in (["-v", "-q"], ["--debug", "info", "-q"]):
        with pytest.raises(UsageError, match="each set the log level; give one"):
            output(argv)
    with pytest.raises(UsageError, match="unrecognized arguments: -x"):
        output(["-x"])



@pytest.mark.parametrize("args,message", [
    (["--snapshot", "../../x"], "'../../x' is not a snapshot id"),
    (["--snapshot", "20261201T230000.123Z-0a1b2c3d/../x"], "is not a snapshot id"),
    (["--as-of", "0001-01-01"], "is before 1970"),
    (["--as-of", "2026-13-01"], "is not an RFC 3339 time"),
    (["--http-timeout", "inf"], "finite"),
])
def test_restore_and_verify_bound_what_reaches_a_key_or_a_clock(args, message):
    from obsbatch.commands import runner

    for command in ("restore", "verify"):
        extra = ["--target", "/t"] if command == "restore" else []
        with pytest.raises(UsageError) as info:
            runner.parse(command, ["--bucket", "b", *extra, *args], {})
        assert message in str(info.value)


def test_as_of_the_end_of_time_is_the_latest_snapshot_not_a_traceback():
    from obsbatch.commands import runner
    from obsbatch.snapshot import new_id

    config = runner.parse("restore", ["--bucket", "b", "--target", "/t", "--as-of", "9999-12-31"], {})
    assert new_id(config.as_of).startswith("99991231T235959.999Z")


def test_the_signing_keys_old_flag_and_variable_still_sign(tmp_path):
    from obsbatch.testing.ed25519keys import keypair

    private, public = keypair(tmp_path)
    base = ["--source", "/s", "--bucket", "b"]
    assert parse(base + ["--manifest-signing-key", private], {}).signing_key == private
    assert parse(base, {"OBSBATCH_MANIFEST_SIGNING_KEY": private}).signing_key == private
    assert parse(base, {"OBSBATCH_SIGNING_KEY": private}).signing_key == private
    with pytest.raises(UsageError, match="is not an Ed25519 key|is not an unencrypted PEM key"):
        parse(base + ["--signing-key", public], {})


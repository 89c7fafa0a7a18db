"""Pieces of `obsbatch restore`, `obsbatch verify` and anchored manifests (issue #14) that need no server."""

import pytest

from obsbatch import beneath, keys
from obsbatch.commands import runner
from obsbatch.reporting import manifest
from obsbatch.engine.download import attributes, mtime_ns
from obsbatch.errors import UsageError
from obsbatch.commands.restore import local_name
from obsbatch.commands.verify import sampled


@pytest.mark.parametrize("rel", [b"a.txt", b"caf\xe9.txt", b"caf%E9.txt", b"d/e/f g.txt", b"..a", b"a..b/c",
                                 b"x\\y", b"line\nbreak"])
def test_a_key_restores_to_exactly_its_original_name(rel):
    assert local_name(keys.encode(rel), ours=lambda: True) == rel and beneath.valid_path(rel)


@pytest.mark.parametrize("key,name", [("%41.txt", b"%41.txt"), ("a%2Fb.txt", b"a%2Fb.txt"), ("x\\y", b"x\\y"),
                                      ("caf%e9", b"caf%e9")])
def test_a_key_obsbatch_never_makes_is_taken_literally_without_asking(key, name):
    """issue #19: decoding every %XX turned s5cmd's %41.txt into A.txt and a%2Fb.txt into a subdirectory."""
    def never():
        raise AssertionError("no HEAD is needed for a key obsbatch never makes")
    assert local_name(key, ours=never) == name


def test_a_key_that_could_be_either_is_decided_by_the_objects_own_metadata():
    assert local_name("caf%25E9.txt", ours=lambda: True) == b"caf%E9.txt"  # obsbatch's, for a file caf%E9.txt
    assert local_name("caf%25E9.txt", ours=lambda: False) == b"caf%25E9.txt"  # another tool's, literally
    assert keys.plain(b"a.txt") and not keys.plain(b"caf%E9.txt") and not keys.plain(b"caf\xe9")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "dir/", "a//b", "a/%00b"])
def test_keys_that_could_leave_the_target_are_refused(key):
    assert not beneath.valid_path(local_name(key, ours=lambda: True))


def test_metadata_is_read_strictly_and_a_bad_value_is_named_not_applied():
    found, bad = attributes({"mode": "abc", "mtime": "notanumber", "uid": "-1", "gid": "99999999999"})
    assert found == {} and len(bad) == 4
    assert any("mode 'abc'" in b for b in bad) and any("uid '-1'" in b for b in bad)
    assert any("gid '99999999999'" in b for b in bad) and any("mtime 'notanumber'" in b for b in bad)
    found, bad = attributes({"mode": "4755", "uid": "0", "gid": "1000", "mtime": "1.5"})
    assert found == {"mode": 0o4755, "uid": 0, "gid": 1000, "mtime_ns": 1_500_000_000} and bad == []
    # Another tool's object has no mtime metadata: the listing's LastModified is its mtime.
    assert attributes({}, listed_mtime_ns=123) == ({"mtime_ns": 123}, [])


def test_mtime_metadata_as_rclone_writes_it():
    assert mtime_ns("1600000000.123456789") == 1_600_000_000_123_456_789
    assert mtime_ns("1600000000.5") == 1_600_000_000_500_000_000
    assert mtime_ns("1600000000") == 1_600_000_000_000_000_000
    assert mtime_ns("") is None and mtime_ns("yesterday") is None and mtime_ns("1.2.3") is None


def test_the_read_back_sample_is_deterministic_and_nested():
    names = [f"p/{i}.bin" for i in range(4000)]
    ten = {n for n in names if sampled(n, 10)}
    twenty = {n for n in names if sampled(n, 20)}
    assert ten < twenty and 300 < len(ten) < 500 and 650 < len(twenty) < 950
    assert ten == {n for n in names if sampled(n, 10)}
    assert not any(sampled(n, 0) for n in names) and all(sampled(n, 100) for n in names)


def _manifest(path, previous, records):
    writer = manifest.Manifest(str(path), {"previous_head": previous})
    for size in records:
        writer._write({"type": "file", "size": size})
    return writer.close({"uploaded": len(records)})


def test_a_sequence_of_manifests_links_by_head(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    head_a = _manifest(a, None, [1])
    head_b = _manifest(b, head_a, [2, 3])
    head_c = _manifest(c, head_b, [])
    result = manifest.verify_sequence([str(a), str(b), str(c)], head_c)
    assert [r.head for r in result] == [head_a, head_b, head_c] and sum(r.files for r in result) == 3
    with pytest.raises(manifest.Broken, match="does not follow"):
        manifest.verify_sequence([str(a), str(c)])
    with pytest.raises(manifest.Broken, match="not at the expected head"):
        manifest.verify_sequence([str(a), str(b)], head_c)


def test_restore_and_verify_take_the_backups_store_flags_and_variables():
    env = {"OBSBATCH_BUCKET": "b", "OBSBATCH_PREFIX": "daily", "OBSBATCH_TARGET": "/srv/r",
           "OBSBATCH_MANIFEST": "/not/for/restore.jsonl", "OBSBATCH_RESTORE_MANIFEST": "/m.jsonl",
           "OBSBATCH_READ_DATA": "5"}
    config = runner.parse("restore", ["--overwrite"], env)
    assert (config.store.bucket, config.store.prefix, config.target) == ("b", "daily/", "/srv/r")
    assert (config.overwrite, config.restore_manifest) == (True, "/m.jsonl")
    assert not hasattr(config, "source") and not hasattr(config, "read_data")  # no command carries another's fields
    config = runner.parse("verify", ["--read-data", "50"], env)
    assert config.read_data == 50.0 and config.store.bucket == "b" and not hasattr(config, "target")
    with pytest.raises(UsageError, match="--target is required"):
        runner.parse("restore", ["--bucket", "b"], {})
    with pytest.raises(UsageError, match="percentage"):
        runner.parse("verify", ["--bucket", "b", "--read-data", "150"], {})


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_every_flag_of_the_commands_is_in_a_help_group(command):
    text = runner.build_parser(command).format_help()
    body = text[text.index("\noptions:"):]
    assert body.count("\n  --") == body[body.index("\n" + command + ":"):].count("\n  --")  # none left ungrouped

"""Property tests (hypothesis) for the key mapping (issue #11) and the size/duration parsers (issue #6)."""

import argparse
import re
import unicodedata

from hypothesis import example, given, settings
from hypothesis import strategies as st

from obsbatch import keys
from obsbatch.config import parse_size

# A path segment as the kernel can return it: any bytes but '/' and NUL, never "." or "..".
segment = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")).filter(
    lambda b: b not in (b".", b".."))
rel_path = st.lists(segment, min_size=1, max_size=6).map(b"/".join)
utf8_segment = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                       min_size=1, max_size=30).filter(lambda t: t not in (".", ".."))


@settings(max_examples=400)
@given(rel_path)
@example(b"caf\xe9/\xff\xfe.bin")
def test_every_key_is_valid_utf8_and_keeps_the_segments(rel):
    key = keys.encode(rel)
    key.encode("utf-8")  # S3 keys are UTF-8: no lone surrogate may survive
    assert not key.startswith("/")
    parts = key.split("/")
    assert len(parts) == rel.count(b"/") + 1  # one key segment per path segment
    assert ".." not in parts and "." not in parts and "" not in parts
    # Nothing a store rewrites or refuses (issue #19): no backslash (SeaweedFS makes it '/'), no control
    # character (moto refuses a newline).
    assert not any(c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in key), key
    assert [keys.encode(segment) for segment in rel.split(b"/")] == parts  # the walk encodes name by name


# Bytes rich in what the rule is about: '%', hex digits, and bytes that are not UTF-8 on their own.
tricky = st.lists(st.sampled_from([b"%", b"E", b"9", b"e", b"f", b"G", b"2", b"5", b"\xe9", b"\xc3", b"\xa9",
                                   b"/", b"a", b"\\", b"C", b"\n", b"\x7f", b"0", b"A"]), max_size=12).map(b"".join)


@settings(max_examples=1000)
@given(st.one_of(rel_path, tricky))
@example(b"caf\xe9.txt")
@example(b"caf%E9.txt")
@example(b"%%E9")
@example(b"x.obsbatch/.obsbatch")
def test_decode_inverts_encode_exactly(rel):
    assert keys.decode(keys.encode(rel)) == rel
    assert keys.canonical(keys.encode(rel))  # a restore takes every key obsbatch wrote as obsbatch's


@settings(max_examples=1000)
@given(st.one_of(rel_path, tricky), st.one_of(rel_path, tricky))
@example(b"caf\xe9.txt", b"caf%E9.txt")
@example(b"%\xe9", b"%%E9")
@example(b".obsbatch", b"%2Eobsbatch")
def test_two_paths_never_share_a_key(a, b):
    if a != b:
        assert keys.encode(a) != keys.encode(b)


@given(st.lists(utf8_segment, min_size=1, max_size=5))
def test_valid_utf8_names_without_percent_map_to_themselves_without_normalization(segments):
    text = "/".join(segments).replace("%", "_").replace("\\", "_")
    text = "".join("_" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)
    assert keys.encode(text.encode("utf-8")) == text
    nfd = unicodedata.normalize("NFD", text)
    if nfd != unicodedata.normalize("NFC", text):  # two spellings of one name: two files, two keys
        assert keys.encode(nfd.encode()) != keys.encode(unicodedata.normalize("NFC", text).encode())


@given(st.integers(min_value=1, max_value=2 ** 50), st.sampled_from(["", "B", "KiB", "mib", "GiB", "KB", "MB", "m"]))
def test_sizes_parse_to_the_bytes_they_name(number, unit):
    # Binary units whatever the spelling, as aws-cli reads them ("64MB" is 64 MiB).
    factor = {"": 1, "b": 1, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "kb": 2 ** 10, "mb": 2 ** 20,
              "m": 2 ** 20}[unit.lower()]
    assert parse_size(f"{number}{unit}") == number * factor


@given(st.text(max_size=12))
@example("0")
@example("-5MiB")
@example("1.5GiB")
def test_anything_but_a_positive_size_is_refused_with_a_sentence(text):
    try:
        value = parse_size(text)
    except argparse.ArgumentTypeError as exc:
        assert str(exc).startswith(repr(text))
    else:
        assert value > 0 and re.fullmatch(r"\s*\d+\s*[a-zA-Z]*\s*", text)


# --- config parsing --------------------------------------------------------------------------------------

VALUE_FLAGS = ["--prefix", "--endpoint", "--region", "--http-timeout", "--max-concurrent", "--max-concurrent-limit",
               "--debug", "--min-age",
               "--include", "--exclude", "--ca-bundle", "--addressing-style", "--checksum-mode",
               "--multipart-threshold", "--multipart-chunksize", "--max-rps", "--retries", "--fd-check",
               "--log-format", "--stop-timeout", "--max-defer", "--state", "--manifest", "--otel-endpoint",
               "--summary", "--bucket"]


@settings(max_examples=600)
@given(st.sampled_from(VALUE_FLAGS), st.text(max_size=40))
@example("--endpoint", "http://[::1")
@example("--endpoint", "https://host:0x50")
@example("--max-concurrent", "٣")  # a non-ASCII digit, which int() accepts
@example("--http-timeout", "1e400")
def test_any_flag_value_gives_a_config_or_one_usage_sentence_never_another_exception(flag, value):
    from obsbatch.commands.backup import parse
    from obsbatch.errors import UsageError

    try:
        config = parse(["--source", "/s", "--bucket", "b", f"{flag}={value}"], {})
    except UsageError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
    else:
        assert config.transfer.most_in_flight >= 1 and config.transfer.http_timeout > 0 and config.transfer.retries >= 0
        assert config.multipart_chunksize >= 5 * 2 ** 20 and config.multipart_threshold <= 5 * 2 ** 30


hostname = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}\Z")


@given(st.sampled_from(["http", "https"]), hostname, st.one_of(st.none(), st.integers(1, 65535)), st.booleans())
def test_a_well_formed_endpoint_is_kept_without_its_trailing_slash(scheme, host, port, slash):
    from obsbatch.config import endpoint_url

    url = f"{scheme}://{host}{f':{port}' if port else ''}{'/' if slash else ''}"
    assert endpoint_url(url) == url.rstrip("/")


@given(st.text(max_size=40))
@example("https://host/bucket")
@example("https://key:secret@host")
@example("http://a\nb")
@example("http://a\tb:80")
def test_an_accepted_endpoint_is_only_ever_scheme_host_and_port(text):
    import urllib.parse

    from obsbatch.config import endpoint_url

    try:
        url = urllib.parse.urlsplit(endpoint_url(text))
    except argparse.ArgumentTypeError as exc:
        userinfo = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*@", text)
        if userinfo:  # "user:password@" is credentials: never echoed
            assert userinfo.group(0) not in str(exc)
        return
    assert url.scheme in ("http", "https") and url.hostname
    assert endpoint_url(text) == f"{url.scheme}://{url.netloc}"  # nothing urlsplit dropped on the way
    assert url.path == "" and not url.query and not url.fragment and not url.username and not url.password


@given(st.text(max_size=300))
@example("my-backups")
@example("a" * 256)
def test_bucket_names_accepted_are_exactly_what_botocore_accepts(text):
    from botocore.handlers import VALID_BUCKET

    from obsbatch.config import bucket_name

    try:
        accepted = bucket_name(text) == text
    except argparse.ArgumentTypeError:
        accepted = False
    assert accepted == bool(VALID_BUCKET.search(text))


@given(st.integers(0, 36500), st.sampled_from(["", "s", "m", "min", "h", "d", "S", "H"]))
def test_durations_parse_to_seconds(number, unit):
    from obsbatch.config import duration

    factor = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[unit.lower()]
    assert duration(f"{number}{unit}") == number * factor


@given(st.text(max_size=12))
@example("-1")
@example("1.5")
@example("inf")
@example("99999999999")
def test_whole_number_flags_accept_only_whole_numbers_in_their_range(text):
    from obsbatch.config import whole_number

    for minimum, maximum in ((0, 50), (1, 1024)):
        try:
            value = whole_number(minimum, maximum)(text)
        except argparse.ArgumentTypeError as exc:
            assert str(exc).startswith(repr(text))
        else:
            assert isinstance(value, int) and minimum <= value <= maximum


@settings(max_examples=500)
@given(st.one_of(rel_path, tricky), st.one_of(rel_path, tricky))
@example(b"caf\xe9.txt", b"caf\\xe9.txt")
def test_the_displayed_path_is_unambiguous_and_invertible(a, b):
    """issue #19: the manifest spelled the one byte \\xe9 and the four characters `\\xe9` alike."""
    from obsbatch.models import display, undisplay

    assert undisplay(display(a)) == a
    if a != b:
        assert display(a) != display(b)

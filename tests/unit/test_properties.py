"""Property tests (hypothesis) for the key mapping and the size/duration parsers (issue #6)."""

import argparse
import re
import unicodedata

from hypothesis import example, given, settings
from hypothesis import strategies as st

from obsbatch.config import parse_size
from obsbatch.plan import key_part, object_key

# A path segment as the kernel can return it: any bytes but '/' and NUL, never "." or "..".
segment = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")).filter(
    lambda b: b not in (b".", b".."))
rel_path = st.lists(segment, min_size=1, max_size=6).map(b"/".join)
utf8_segment = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                       min_size=1, max_size=30).filter(lambda t: t not in (".", ".."))


@settings(max_examples=400)
@given(rel_path)
@example(b"caf\xe9/\xff\xfe.bin")
def test_every_key_is_valid_utf8_keeps_the_segments_and_never_escapes_the_prefix(rel):
    key = object_key("backups/daily/", rel)
    key.encode("utf-8")  # S3 keys are UTF-8: no lone surrogate may survive
    assert key.startswith("backups/daily/") and not key.startswith("/")
    parts = key[len("backups/daily/"):].split("/")
    assert len(parts) == rel.count(b"/") + 1  # one key segment per path segment
    assert ".." not in parts and "." not in parts and "" not in parts


@settings(max_examples=400)
@given(rel_path)
def test_escaping_round_trips_to_the_original_bytes_when_the_name_had_no_percent(rel):
    key = key_part(rel)
    if b"%" not in rel:  # the one documented ambiguity: a literal "%XX" in a valid name
        back = re.sub(r"%([0-9A-F]{2})", lambda m: chr(0xDC00 + int(m.group(1), 16)), key)
        assert back.encode("utf-8", "surrogateescape") == rel


@given(st.lists(utf8_segment, min_size=1, max_size=5))
def test_valid_utf8_names_map_to_themselves_without_normalization(segments):
    text = "/".join(segments)
    assert key_part(text.encode("utf-8")) == text
    nfd = unicodedata.normalize("NFD", text)
    if nfd != unicodedata.normalize("NFC", text):  # two spellings of one name: two files, two keys
        assert key_part(nfd.encode()) != key_part(unicodedata.normalize("NFC", text).encode())


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
        assert str(exc).startswith(f"'{text}'")
    else:
        assert value > 0 and re.fullmatch(r"\s*\d+\s*[a-zA-Z]*\s*", text)

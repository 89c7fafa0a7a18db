import pytest

from obsbatch import keys
from obsbatch.models import display


@pytest.mark.parametrize("rel,key", [
    (b"a/b/c.txt", "a/b/c.txt"),
    ("данные/отчёт.csv".encode(), "данные/отчёт.csv"),
    (b"with space/and+plus.txt", "with space/and+plus.txt"),  # valid UTF-8 kept byte for byte
    (b"bad\xff/name\xfe\xfd.bin", "bad%FF/name%FE%FD.bin"),
    (b"caf\xc3", "caf%C3"),  # a truncated UTF-8 sequence
    ("e\u0301".encode(), "e\u0301"),  # NFD stays NFD: no Unicode normalization
    (b"100% sure/50%.txt", "100% sure/50%.txt"),  # a % before no two hex digits stays
    (b"caf%E9.txt", "caf%25E9.txt"),  # ... before two hex digits it would read as an escape: %25
    (b"caf%e9/%%41", "caf%25e9/%%2541"),
    (b"%\xe9", "%%E9"),  # a literal % followed by an escaped byte
    (b"x\\y", "x%5Cy"),  # SeaweedFS stores a backslash as '/' (issue #19)
    (b"back\\slash/\\", "back%5Cslash/%5C"),
    (b"line\nbreak\ttab\x7f", "line%0Abreak%09tab%7F"),  # control characters (moto refuses a newline)
    (b"%5C", "%255C"),  # an escape spelled literally stays apart from the backslash
    # A name ending in .obsbatch would land in obsbatch's own area (the prefix ""'s, or p1/'s): its '.' escaped.
    (b".obsbatch/snapshots/x.json", "%2Eobsbatch/snapshots/x.json"),
    (b"p1.obsbatch/x", "p1%2Eobsbatch/x"),
    (b"a/.obsbatch", "a/%2Eobsbatch"),
    (b"%2Eobsbatch", "%252Eobsbatch"),
    (b".obsbatchx/a.obsbatch.txt", ".obsbatchx/a.obsbatch.txt"),
])
def test_encode_and_decode(rel, key):
    assert keys.encode(rel) == key
    assert keys.decode(key) == rel


def test_the_names_that_used_to_share_a_key_do_not():
    assert keys.encode(b"caf\xe9.txt") != keys.encode(b"caf%E9.txt")


def test_nfc_and_nfd_names_stay_distinct_keys():
    assert keys.encode("\u00e9".encode()) != keys.encode("e\u0301".encode())


def test_display_never_yields_unencodable_text():
    text = display(b"/src/bad\xff")
    assert text == "/src/bad\\xff"
    text.encode("utf-8")  # would raise for a surrogate escape


@pytest.mark.parametrize("key,ours", [("a/b.txt", True), ("x%5Cy", True), ("caf%25E9.txt", True),
                                      ("%41.txt", False), ("a%2Fb.txt", False), ("x\\y", False),
                                      ("caf%e9", False), ("line\nbreak", False)])
def test_canonical_tells_our_keys_from_keys_another_tool_wrote(key, ours):
    """%41 (an escaped 'A') and %2F (an escaped '/') are never written by encode, nor a raw backslash or
    control character, nor a lower-case escape: such a key is another tool's, taken literally by a restore."""
    assert keys.canonical(key) is ours


def test_records_before_the_reserved_rule_keep_their_keys():
    assert keys.encoder({})(b".obsbatch/x") == ".obsbatch/x"
    assert keys.encoder({"key_format": keys.KEY_FORMAT})(b".obsbatch/x") == "%2Eobsbatch/x"

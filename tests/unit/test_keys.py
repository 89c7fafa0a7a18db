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

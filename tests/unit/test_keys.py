import pytest

from obsbatch.models import display
from obsbatch.plan import key_part, object_key


@pytest.mark.parametrize("rel,key", [
    (b"a/b/c.txt", "a/b/c.txt"),
    ("данные/отчёт.csv".encode(), "данные/отчёт.csv"),
    (b"with space/and+plus%41.txt", "with space/and+plus%41.txt"),  # valid UTF-8 kept byte for byte
    (b"bad\xff/name\xfe\xfd.bin", "bad%FF/name%FE%FD.bin"),
    (b"caf\xc3", "caf%C3"),  # a truncated UTF-8 sequence
    ("e\u0301".encode(), "e\u0301"),  # NFD stays NFD: no Unicode normalization
])
def test_key_part(rel, key):
    assert key_part(rel) == key


def test_prefix_joined_without_double_slash():
    assert object_key("daily/", b"x/y") == "daily/x/y"
    assert object_key("", b"x/y") == "x/y"


def test_nfc_and_nfd_names_stay_distinct_keys():
    assert key_part("\u00e9".encode()) != key_part("e\u0301".encode())


def test_display_never_yields_unencodable_text():
    text = display(b"/src/bad\xff")
    assert text == "/src/bad\\xff"
    text.encode("utf-8")  # would raise for a surrogate escape

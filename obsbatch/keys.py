"""The one mapping between a path relative to --source (bytes) and the object key it is stored under.

Rule (README "Keys"), per character of the name decoded as UTF-8:
- a byte that is not part of valid UTF-8 is written `%XX` (two upper-case hex digits);
- a `%` that two hex digits follow (either case) is written `%25`, so that it cannot be read as such an
  escape;
- every other character is written as it is, `/` included.

So every valid UTF-8 name without `%` keeps exactly the key `aws s3 sync` gives it (no Unicode
normalization: NFC and NFD spellings stay two keys), and the mapping is injective and exactly invertible:
`decode(encode(rel)) == rel` for every path, which a restore relies on. Before issue #11 a `%` was never
escaped, so `caf\\xe9.txt` (not UTF-8) and `caf%E9.txt` (valid) shared one key and one of the two files was
silently missing from the backup.

Encoding a whole path and encoding each of its `/`-separated names give the same key: `/` is ASCII, so it
never ends an invalid UTF-8 sequence early or sits inside a valid one, and it is not a hex digit. The walk
relies on that to encode each name once, not each full path.
"""

from __future__ import annotations

import re

# A `%` that would read as an escape, or a byte that surrogateescape turned into U+DC80..U+DCFF.
_NEEDS_ESCAPE = re.compile("%(?=[0-9A-Fa-f]{2})|[\udc80-\udcff]")
_ESCAPE = re.compile("%([0-9A-Fa-f]{2})")


def _escape(match: re.Match) -> str:
    char = match.group()
    return "%25" if char == "%" else f"%{ord(char) - 0xDC00:02X}"


def encode(rel: bytes) -> str:
    """The key text for a relative path (or one name): valid UTF-8 as it is, the rest escaped (module docstring)."""
    try:
        text = rel.decode("utf-8")
    except UnicodeDecodeError:
        # surrogateescape turns exactly the bytes that are not valid UTF-8 into U+DC80..U+DCFF, one each.
        text = rel.decode("utf-8", "surrogateescape")
    else:
        if "%" not in text:
            return text  # the common case: nothing to escape
    return _NEEDS_ESCAPE.sub(_escape, text)


def decode(text: str) -> bytes:
    """The relative path (or name) that `encode` maps to `text`: each `%XX` back to its byte."""
    out = bytearray()
    start = 0
    for match in _ESCAPE.finditer(text):
        out += text[start:match.start()].encode("utf-8")
        out.append(int(match.group(1), 16))
        start = match.end()
    out += text[start:].encode("utf-8")
    return bytes(out)

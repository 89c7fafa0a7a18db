"""The one mapping between a path relative to --source (bytes) and the object key it is stored under.

Rule (README "Keys"), per character of the name decoded as UTF-8:
- a byte that is not part of valid UTF-8 is written `%XX` (two upper-case hex digits);
- a backslash is written `%5C`: SeaweedFS turns `\\` into `/` (measured on 4.48: `x\\y` is stored as `x/y`,
  so a file `x\\y` and a file `y` in a directory `x` shared one object; issue #19), and MinIO on Windows
  takes it for a separator too;
- an ASCII control character (U+0000..U+001F, U+007F) is written `%XX`: moto's server refuses a key with a
  newline (404 on PUT), XML 1.0 cannot carry most of them in a ListObjects answer without URL encoding,
  and AWS lists them among the characters to avoid;
- a `%` that two hex digits follow (either case) is written `%25`, so that it cannot be read as such an
  escape;
- a name that ends in `.obsbatch` has that `.` written `%2E` (`.obsbatch` -> `%2Eobsbatch`, `p1.obsbatch` ->
  `p1%2Eobsbatch`), at every depth: obsbatch keeps its own objects (snapshot records and packs, manifests,
  fleet markers) under `<prefix less '/'>.obsbatch/`, which for the prefix "" is `.obsbatch/` and for `p1/`
  is `p1.obsbatch/`, where a source's own `.obsbatch` (prefix "") or `p1.obsbatch` (a prefix above `p1/`)
  would otherwise land: its files were read as snapshot records, and overwritten by fleet markers. A `.` is
  otherwise never escaped, so no other name has that key; at every depth, so that a name's key does not
  depend on where the name is (the walk encodes names one at a time). Records written before this rule have
  no `key_format` and name their files' keys by `encode_v1` (`encoder`);
- every other character is written as it is, `/` included.

So every valid UTF-8 name without `%`, `\\` or a control character keeps exactly the key `aws s3 sync` gives
it (no Unicode normalization: NFC and NFD spellings stay two keys), and the mapping is injective and
exactly invertible: `decode(encode(rel)) == rel` for every path, which a restore relies on. Before issue #11
a `%` was never escaped, so `caf\\xe9.txt` (not UTF-8) and `caf%E9.txt` (valid) shared one key and one of
the two files was silently missing from the backup.

`canonical(key)` tells a key this mapping makes (`encode(decode(key)) == key`) from one it never makes
(`%41.txt`, `a%2Fb`): a restore takes the latter literally, as another tool wrote it.

Encoding a whole path and encoding each of its `/`-separated names give the same key: `/` is ASCII, so it
never ends an invalid UTF-8 sequence early or sits inside a valid one, and it is not a hex digit. The walk
relies on that to encode each name once, not each full path.
"""

from __future__ import annotations

import re

# A `%` that would read as an escape, a byte that surrogateescape turned into U+DC80..U+DCFF, a backslash, or
# an ASCII control character (module docstring).
_NEEDS_ESCAPE = re.compile("%(?=[0-9A-Fa-f]{2})|[\udc80-\udcff\\\\\x00-\x1f\x7f]")
# What may need escaping in valid UTF-8: the common case, a name with none of these, is returned as it is.
_SPECIAL = re.compile("[%\\\\\x00-\x1f\x7f]")
_ESCAPE = re.compile("%([0-9A-Fa-f]{2})")


def _escape(match: re.Match) -> str:
    char = match.group()
    if char == "%":
        return "%25"
    code = ord(char)
    return f"%{code - 0xDC00 if code >= 0xDC80 else code:02X}"


#: How the name of obsbatch's own area beside the data ends (module docstring); a data name ending so has its
#: `.` escaped in its key.
RESERVED = ".obsbatch"
_RESERVED = re.compile(r"\.obsbatch(?=/|$)")
#: The key format of snapshot records that name their files' keys by `encode` (with the RESERVED rule).
KEY_FORMAT = 2


def encode(rel: bytes) -> str:
    """The key text for a relative path (or one name): valid UTF-8 as it is, the rest escaped (module docstring)."""
    text = encode_v1(rel)
    return _RESERVED.sub("%2Eobsbatch", text) if RESERVED in text else text


def encode_v1(rel: bytes) -> str:
    """`encode` without the RESERVED rule: the keys of records written before it (`encoder`)."""
    try:
        text = rel.decode("utf-8")
    except UnicodeDecodeError:
        # surrogateescape turns exactly the bytes that are not valid UTF-8 into U+DC80..U+DCFF, one each.
        text = rel.decode("utf-8", "surrogateescape")
    else:
        if not _SPECIAL.search(text):
            return text  # the common case: nothing to escape
    return _NEEDS_ESCAPE.sub(_escape, text)


def encoder(record: dict):
    """The encode a snapshot record's files were stored by: `encode` from KEY_FORMAT on, else `encode_v1`."""
    return encode if record.get("key_format") == KEY_FORMAT else encode_v1


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


def canonical(text: str) -> bool:
    """Whether `encode` makes `text` (some path's key); False for a key it never makes (`%41.txt`: `A` is never
    escaped), which can only have been written by another tool."""
    return encode(decode(text)) == text


def plain(rel: bytes) -> bool:
    """Whether `rel`'s key is `rel` itself (valid UTF-8, nothing escaped). Only a name that is not plain can be
    both another tool's literal key and the decoding of one of obsbatch's (`a%b` and `a%25b`): a restore keeps
    track of those names alone to find two keys that would land on one path."""
    try:
        return encode(rel) == rel.decode("utf-8")
    except UnicodeDecodeError:
        return False

"""Stage 4: map a stable Candidate to its object key and a WorkItem.

Keys are `prefix + relative path` with `/` separators: for valid UTF-8 names exactly the keys
`aws s3 sync SRC s3://BUCKET/PREFIX` writes (no Unicode normalization: NFC and NFD spellings stay two
keys). A name that is not valid UTF-8 cannot be an S3 key as it is, so each byte that does not decode is
written as `%XX` (upper-case hex) and the file is still backed up. The one cost, documented in the README:
a valid name that literally contains `%FF` and an invalid one with byte 0xFF in the same place map to the
same key.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, Union

from obsbatch.models import Candidate, Outcome, WorkItem, display

_ESCAPED = re.compile("[\udc80-\udcff]")


def key_part(rel: bytes) -> str:
    """The key for a relative path (bytes, `/`-separated), undecodable bytes percent-escaped."""
    # surrogateescape turns exactly the bytes that are not valid UTF-8 into U+DC80..U+DCFF, one each.
    text = rel.decode("utf-8", "surrogateescape")
    return _ESCAPED.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)


def object_key(prefix: str, rel: bytes) -> str:
    """`prefix` is already normalized by Config (empty, or ending in '/')."""
    return prefix + key_part(rel)


def work_item(cand: Candidate, prefix: str) -> WorkItem:
    st = cand.stat
    return WorkItem(path=cand.path, display=display(cand.path), key=object_key(prefix, cand.rel),
                    size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, dev=st.st_dev, ino=st.st_ino,
                    remote_etag=cand.remote_etag)


def plan(items: Iterable[Union[Candidate, Outcome]], prefix: str) -> Iterator[Union[WorkItem, Outcome]]:
    for item in items:
        yield work_item(item, prefix) if isinstance(item, Candidate) else item

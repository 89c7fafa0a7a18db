"""Stage 4: a stable Candidate becomes the WorkItem a worker uploads (plain data, picklable)."""

from __future__ import annotations

from typing import Iterable, Iterator, Union

from obsbatch.models import Candidate, Outcome, WorkItem, display


def work_item(cand: Candidate) -> WorkItem:
    st = cand.stat
    return WorkItem(path=cand.path, display=display(cand.path), key=cand.key, size=st.st_size,
                    mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, dev=st.st_dev, ino=st.st_ino,
                    remote_etag=cand.remote_etag, remote_version=cand.remote_version,
                    copy_source=cand.copy_source)


def plan(items: Iterable[Union[Candidate, Outcome]]) -> Iterator[Union[WorkItem, Outcome]]:
    for item in items:
        yield work_item(item) if isinstance(item, Candidate) else item

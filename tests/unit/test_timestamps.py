"""obsbatch.s3.client.timestamp: botocore's values, faster (issue #21)."""

from __future__ import annotations

import botocore.utils
import pytest

from obsbatch.s3.client import timestamp


@pytest.mark.parametrize("text", ["2026-12-03T06:04:28.000Z", "2026-12-03T06:04:28.123456Z", "2026-12-03T06:04:28Z",
                                  "2026-12-03T06:04:28+03:00", "Thu, 03 Dec 2026 06:04:28 GMT", "1700000000",
                                  "2026-12-03T06:04:28"])
def test_a_time_reads_as_botocore_reads_it(text):
    ours, theirs = timestamp(text), botocore.utils.parse_timestamp(text)
    assert ours == theirs and ours.utcoffset() == theirs.utcoffset()


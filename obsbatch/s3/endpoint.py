"""Where and how a process reaches the store: plain data, pickled to every worker.

A module of its own that imports no botocore: the parent builds an Endpoint (inside WorkerSettings) without
importing botocore, which a run that uploads through the workers does not need in the parent (issue #12).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union


@dataclass(frozen=True)
class Endpoint:
    """What a process needs to build its own S3 client: plain data, pickled to every worker.

    url: --endpoint (None: AWS). region, addressing_style, checksum_mode: as the flags.
    http_timeout: connect and read timeout. retries: --retries (a request is sent at most retries + 1 times).
    verify: False (--no-verify-ssl), a CA bundle path (--ca-bundle), or None (botocore's default trust).
    """

    url: Optional[str]
    region: Optional[str]
    addressing_style: str
    checksum_mode: str
    http_timeout: float
    retries: int
    verify: Union[bool, str, None]

    @classmethod
    def from_config(cls, config) -> "Endpoint":
        """From any command's config: its store and transfer parts."""
        store, transfer = config.store, config.transfer
        return cls(url=store.endpoint, region=store.region, addressing_style=store.addressing_style,
                   checksum_mode=store.checksum_mode, http_timeout=transfer.http_timeout, retries=transfer.retries,
                   verify=False if store.no_verify_ssl else store.ca_bundle)

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

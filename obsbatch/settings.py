"""What a worker process is given: plain frozen settings, pickled once to each worker at its start.

A module of its own, importing nothing heavy: the parent builds these without importing botocore, which a
run that uploads through the workers does not need in the parent at all (issue #12).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from obsbatch.archive import ArchiveControls
from obsbatch.config import Config


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
    def from_config(cls, config: Config) -> "Endpoint":
        return cls(url=config.endpoint, region=config.region, addressing_style=config.addressing_style,
                   checksum_mode=config.checksum_mode, http_timeout=config.http_timeout, retries=config.retries,
                   verify=False if config.no_verify_ssl else config.ca_bundle)

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs of the Config, pickled once to each worker at its start.

    endpoint: how to build the S3 client (Endpoint). bucket, prefix: where every key goes.
    threads: upload threads per worker process at most (Config.threads); `workers`: how many processes
        share the level (Config.processes).
    multipart_threshold, multipart_chunksize, verify_after_upload, follow_symlinks: as the flags.
    log_level, log_format: the worker's logs go to the same stderr as the parent's, in the same form.
    archive: what every object is stored with (--object-lock-*, --sse*, --storage-class, --tag, --metadata,
        the POSIX attributes); holds the SSE-C key, and never prints it.
    """

    endpoint: Endpoint
    bucket: str
    prefix: str
    threads: int
    workers: int
    multipart_threshold: int
    multipart_chunksize: int
    verify_after_upload: bool
    follow_symlinks: bool
    log_level: str
    log_format: str
    archive: ArchiveControls

    @classmethod
    def from_config(cls, config: Config) -> "WorkerSettings":
        return cls(endpoint=Endpoint.from_config(config), bucket=config.bucket, prefix=config.prefix,
                   threads=config.threads,
                   workers=config.processes, multipart_threshold=config.multipart_threshold, multipart_chunksize=config.multipart_chunksize,
                   verify_after_upload=config.verify_after_upload, follow_symlinks=config.follow_symlinks,
                   log_level=config.debug, log_format=config.log_format, archive=config.archive)

"""What a worker process is given: plain frozen settings, pickled once to each worker at its start.

A module of its own, importing nothing heavy: the parent builds these without importing botocore, which a
run that uploads through the workers does not need in the parent at all (issue #12).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from obsbatch.archive import ArchiveControls
from obsbatch.config import MiB, BackupConfig, RestoreConfig, VerifyConfig
from obsbatch.s3.endpoint import Endpoint


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs of the command's config, pickled once to each worker at its start.

    endpoint: how to build the S3 client (Endpoint). bucket, prefix: where every key is.
    threads: threads per worker process at most (TransferConfig.threads); `workers`: how many processes
        share the level (TransferConfig.processes).
    log_level, log_format, host_id: the worker's logs go to the same stderr as the parent's, in the same form.
    archive: what every object is stored with (--object-lock-*, --sse*, --storage-class, --tag, --metadata,
        the POSIX attributes), or for a restore only the SSE-C key it is read with; never prints the key.
    multipart_threshold, multipart_chunksize, verify_after_upload, follow_symlinks: a backup's flags. A
        restore leaves them at their defaults: only the threshold is read, by the pool, which sends an object
        that big in a batch of its own.
    """

    endpoint: Endpoint
    bucket: str
    prefix: str
    threads: int
    workers: int
    log_level: str
    log_format: str
    host_id: str
    archive: ArchiveControls
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB
    verify_after_upload: bool = False
    follow_symlinks: bool = False
    #: The fleet marker the pre-flight reads for a journal that knows nothing of the prefix (the seed: the
    #: latest snapshot of this host there); "" when the journal knows the prefix.
    seed_marker: str = ""

    @classmethod
    def _common(cls, config, archive: ArchiveControls, **own) -> "WorkerSettings":
        return cls(endpoint=Endpoint.from_config(config), bucket=config.store.bucket, prefix=config.store.prefix,
                   threads=config.transfer.threads, workers=config.transfer.processes,
                   log_level=config.output.level, log_format=config.output.log_format,
                   host_id=config.output.host_id, archive=archive, **own)

    @classmethod
    def for_backup(cls, config: BackupConfig, seed_marker: str = "") -> "WorkerSettings":
        return cls._common(config, config.archive, multipart_threshold=config.multipart_threshold,
                           multipart_chunksize=config.multipart_chunksize,
                           verify_after_upload=config.verify_after_upload, follow_symlinks=config.follow_symlinks,
                           seed_marker=seed_marker)

    @classmethod
    def for_reading(cls, config: Union[RestoreConfig, VerifyConfig]) -> "WorkerSettings":
        """A restore's or a verify's: only the SSE-C key the objects are read with."""
        return cls._common(config, config.store.reading)

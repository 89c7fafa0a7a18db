"""obsbatch: back up a directory tree to S3-compatible storage, never a file still being written."""

__version__ = "0.1.0"

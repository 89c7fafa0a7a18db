"""What the parent tells the world about a run: the summary and exit code, the progress bar, systemd's
notify state, OpenTelemetry, the hash-chained manifest.
"""

"""OpenTelemetry traces and metrics over OTLP/HTTP, from the parent process only.

Configured by the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT, ..._TRACES_ENDPOINT, ..._HEADERS,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_SDK_DISABLED; the SDK reads
them itself) or `--otel-endpoint`. Nothing is exported unless an endpoint is configured: the SDK's own
fallback, localhost:4318, is not what an operator who set nothing asked for.

One trace per run: a root span `obsbatch.run` carrying the summary, a child `obsbatch.upload` per uploaded
or failed file (built here from the start and end times the worker's Outcome carries, so workers need no
exporter), and skips as events on the root span. Metrics: files and bytes by outcome, upload duration.

Telemetry never blocks or fails an upload: spans and metrics are exported by the SDK's background threads;
shutdown is bounded by the exporter timeout (3 s unless OTEL_EXPORTER_OTLP_TIMEOUT says otherwise) plus a
second; the SDK's own log records are caught and summed up in one `telemetry.export_failed` warning; and any
exception here disables telemetry for the rest of the run with one `telemetry.disabled` warning.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Mapping

import structlog

from obsbatch.config import BackupConfig
from obsbatch.models import Kind, Outcome, Reason

log = structlog.get_logger()

#: Exporter timeout when no OTEL_EXPORTER_OTLP_*TIMEOUT is set (the SDK's default, 10 s, is a long wait at
#: the end of a backup for a receiver that is not there).
DEFAULT_TIMEOUT = 3.0

_ENDPOINTS = {
    "traces": ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    "metrics": ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
}
_TIMEOUTS = ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT")


class _Collect(logging.Handler):
    """Keeps the OpenTelemetry SDK's warnings out of the JSON log stream, to be reported once at the end."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.last = record.getMessage()[:300]


def _guarded(method):
    """Telemetry must never break the run: the first exception disables it, with one warning."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self.enabled = False
            log.warning("telemetry.disabled", error=f"{type(exc).__name__}: {exc}")
            return None

    return wrapper


class Telemetry:
    """The run's tracer and meter. `Telemetry.disabled()` does nothing at all."""

    def __init__(self):
        self.enabled = False
        self._root = None
        #: The run's bucket and prefix, the attributes of its run-level metrics (end_run, abort_run).
        self._run_attributes: dict = {}
        #: Whether metrics are exported (the instruments below exist only then).
        self._metered = False
        self._providers = []
        self._timeout = DEFAULT_TIMEOUT
        self._sdk_log = _Collect()

    @classmethod
    def disabled(cls) -> "Telemetry":
        return cls()

    @classmethod
    def from_config(cls, config: BackupConfig, environ: Mapping[str, str]) -> "Telemetry":
        """Set up exporters if an endpoint is configured and telemetry is not turned off."""
        telemetry = cls()
        if config.no_telemetry or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return telemetry
        wanted = {signal: bool(config.otel_endpoint or any(environ.get(v) for v in names))
                  for signal, names in _ENDPOINTS.items()}
        if not any(wanted.values()):
            return telemetry
        try:
            telemetry._setup(config, environ, wanted)
            telemetry.enabled = True
        except Exception as exc:
            log.warning("telemetry.disabled", error=f"{type(exc).__name__}: {exc}")
        return telemetry

    def _setup(self, config: BackupConfig, environ: Mapping[str, str], wanted: dict) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from obsbatch import __version__

        sdk_logger = logging.getLogger("opentelemetry")
        sdk_logger.addHandler(self._sdk_log)
        sdk_logger.propagate = False
        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; name the service only if
        # the operator did not.
        resource = Resource.create({"service.version": __version__})
        if resource.attributes.get("service.name", "").startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "obsbatch"}))
        # --host-id names the host here as in the logs and the snapshots, over OTEL_RESOURCE_ATTRIBUTES' host.name:
        # a fleet's metrics and its snapshots must agree on whose they are.
        resource = resource.merge(Resource({"host.name": config.output.host_id}))
        # The Python exporters read these in seconds; when one is set, they use it and so does shutdown().
        env_timeout = next((environ[v] for v in _TIMEOUTS if environ.get(v)), None)
        timeout = None if env_timeout else DEFAULT_TIMEOUT
        if env_timeout:
            try:
                self._timeout = float(env_timeout)
            except ValueError:  # the SDK warns and uses its default, 10 s
                self._timeout = 10.0
        base = config.otel_endpoint.rstrip("/") if config.otel_endpoint else None
        if wanted["traces"]:
            exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces" if base else None, timeout=timeout)
            self._tracer_provider = TracerProvider(resource=resource)
            self._tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
            self._providers.append(self._tracer_provider)
            self._tracer = self._tracer_provider.get_tracer("obsbatch", __version__)
        else:
            self._tracer = None
        if wanted["metrics"]:
            exporter = OTLPMetricExporter(endpoint=f"{base}/v1/metrics" if base else None, timeout=timeout)
            # OTEL_METRIC_EXPORT_INTERVAL (default 60 s) sets the period; shutdown exports the final values.
            provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(exporter)])
            self._providers.append(provider)
            meter = provider.get_meter("obsbatch", __version__)
            self._metered = True
            self._files = meter.create_counter("obsbatch.files", unit="{file}", description="Files by outcome")
            self._bytes = meter.create_counter("obsbatch.bytes", unit="By", description="Bytes by outcome")
            self._stuck = meter.create_counter("obsbatch.files.stuck", unit="{file}",
                                               description="Files deferred for longer than --max-defer")
            self._duration = meter.create_histogram("obsbatch.upload.duration", unit="s",
                                                    description="Time to upload one file, retries included")
            # Run-level gauges, one series per host, bucket and prefix, for alerting (contrib/obsbatch-alerts.yml):
            # a gauge keeps the latest run's value, so a failed run's alert clears when the next run succeeds.
            self._exit_code = meter.create_gauge("obsbatch.run.exit_code", unit="{code}",
                                                 description="The latest run's exit code (README: Exit codes)")
            self._snapshot_time = meter.create_gauge("obsbatch.snapshot.time", unit="s",
                                                     description="When the latest snapshot was taken (Unix time)")

    @_guarded
    def start_run(self, source: str, config: BackupConfig) -> None:
        self._run_attributes = {"obsbatch.bucket": config.store.bucket, "obsbatch.prefix": config.store.prefix}
        if self._tracer is not None:
            self._root = self._tracer.start_span("obsbatch.run", attributes={
                "obsbatch.source": source, "obsbatch.bucket": config.store.bucket, "obsbatch.prefix": config.store.prefix,
                "obsbatch.endpoint": config.store.endpoint or "aws", "obsbatch.dry_run": config.dry_run})

    @_guarded
    def record(self, outcome: Outcome) -> None:
        """One Outcome: a child span for an upload attempt, a root-span event for a skip, metrics for all."""
        from opentelemetry import trace

        kind = outcome.kind
        attributes = {"obsbatch.outcome": kind.value}
        if outcome.reason is not None:
            attributes["obsbatch.reason"] = outcome.reason.value
        if outcome.copied_from:  # stored by a server-side copy: its bytes were not sent
            attributes["obsbatch.copied"] = True
        if self._metered:
            self._files.add(1, attributes)
            self._bytes.add(outcome.size, attributes)
            if kind in (Kind.UPLOADED, Kind.FAILED) and outcome.ended:
                self._duration.record(outcome.ended - outcome.started, {"obsbatch.outcome": kind.value})
        if self._root is None:
            return
        if kind in (Kind.UPLOADED, Kind.FAILED) and outcome.ended:
            span = self._tracer.start_span(
                "obsbatch.upload", context=trace.set_span_in_context(self._root),
                start_time=int(outcome.started * 1e9), attributes={
                    "obsbatch.path": outcome.path, "obsbatch.key": outcome.key, "obsbatch.bytes": outcome.size,
                    "obsbatch.attempts": outcome.attempts, "obsbatch.retries": outcome.retries,
                    "obsbatch.multipart": outcome.multipart,
                    "obsbatch.duration_s": round(outcome.ended - outcome.started, 6)})
            if outcome.copied_from:
                span.set_attribute("obsbatch.copied_from", outcome.copied_from)
            if kind is Kind.FAILED:
                span.set_attribute("error.type", outcome.error_type)
                span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.message))
            span.end(end_time=int(outcome.ended * 1e9))
        elif kind in (Kind.SKIPPED, Kind.DEFERRED, Kind.ERROR) and outcome.reason is not Reason.EXCLUDED:
            # Events live on the root span until it ends; the SDK keeps at most OTEL_SPAN_EVENT_COUNT_LIMIT
            # of them (128 by default), so memory stays bounded however many files are skipped.
            event = {"obsbatch.path": outcome.path, "obsbatch.reason": outcome.reason.value}
            if outcome.holders:
                event["obsbatch.holder.pids"] = [pid for pid, _, _ in outcome.holders]
                event["obsbatch.holder.names"] = [name for _, name, _ in outcome.holders]
            self._root.add_event(f"file.{kind.value}", event)

    @_guarded
    def stuck(self, outcome: Outcome) -> None:
        if self._metered:
            self._stuck.add(1, {"obsbatch.reason": outcome.reason.value})

    @_guarded
    def end_run(self, summary) -> None:
        """The run's end, with its summary."""
        from opentelemetry import trace

        if self._metered:
            self._exit_code.set(int(summary.exit_code), self._run_attributes)
            if summary.snapshot_id:
                self._snapshot_time.set(round(summary.started, 3), self._run_attributes)
        if self._root is None:
            return
        self._root.set_attributes({
            "obsbatch.files.scanned": summary.scanned,
            "obsbatch.files.uploaded": summary.uploaded,
            "obsbatch.files.skipped": sum(summary.skipped.values()),
            "obsbatch.files.deferred": sum(summary.deferred.values()),
            "obsbatch.files.failed": summary.failed,
            "obsbatch.bytes.uploaded": summary.bytes_uploaded,
            "obsbatch.files.copied": summary.copied,
            "obsbatch.bytes.copied": summary.bytes_copied,
            "obsbatch.exit_code": int(summary.exit_code)})
        if summary.manifest_head:  # the manifest's anchor, kept by the trace backend (issue #14)
            self._root.set_attribute("obsbatch.manifest.head", summary.manifest_head)
        if summary.snapshot_head:  # the snapshot chain's anchor (issue #20)
            self._root.set_attribute("obsbatch.snapshot.id", summary.snapshot_id)
            self._root.set_attribute("obsbatch.snapshot.head", summary.snapshot_head)
        if summary.exit_code:
            self._root.set_status(trace.Status(trace.StatusCode.ERROR, f"exit code {int(summary.exit_code)}"))
        self._root.end()
        self._root = None

    @_guarded
    def abort_run(self, error: BaseException, exit_code: int) -> None:
        """A run that a fatal error ended before it had a summary: the error, and the exit code it ends with
        (README: Exit codes), which the alert on failed runs reads."""
        from opentelemetry import trace

        if self._metered:
            self._exit_code.set(exit_code, self._run_attributes)
        if self._root is None:
            return
        self._root.set_attribute("error.type", type(error).__name__)
        self._root.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
        self._root.end()
        self._root = None

    def shutdown(self) -> None:
        """Flush and stop the exporters, in parallel, waiting at most the exporter timeout plus a second."""
        if not self._providers:
            return
        threads = [threading.Thread(target=self._shutdown_one, args=(p,), daemon=True) for p in self._providers]
        for thread in threads:
            thread.start()
        deadline = self._timeout + 1.0
        for thread in threads:
            thread.join(deadline)
        unfinished = sum(thread.is_alive() for thread in threads)
        if self._sdk_log.count or unfinished:
            log.warning("telemetry.export_failed", problems=self._sdk_log.count, last=self._sdk_log.last or None,
                        gave_up_after_s=deadline if unfinished else None,
                        detail="traces or metrics may be missing at the receiver; the backup itself is unaffected")
        self._providers = []

    @staticmethod
    def _shutdown_one(provider) -> None:
        try:
            provider.shutdown()
        except Exception:  # reported through the SDK's log records, or the join deadline
            pass

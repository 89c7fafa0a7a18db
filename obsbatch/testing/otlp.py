"""A real OTLP/HTTP receiver on loopback for tests: decodes what the exporters send with opentelemetry-proto.

Also a "hanging" receiver that accepts connections and never answers, to prove telemetry cannot stall a run.
"""

from __future__ import annotations

import gzip
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


class Receiver:
    def __init__(self, port: int = 0):
        self.traces: list = []
        self.metrics: list = []
        self.paths: list = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                owner.paths.append(self.path)
                if self.path.endswith("/v1/traces"):
                    owner.traces.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                elif self.path.endswith("/v1/metrics"):
                    owner.metrics.append(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                    reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list:
        """Every span received, flattened, each with its resource's attributes as `resource`."""
        out = []
        for request in self.traces:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        out.append((span, resource))
        return out

    def metric_points(self) -> dict:
        """{metric name: [(attributes, value)]} over everything received (sums, gauges, histogram counts)."""
        out: dict = {}
        for request in self.metrics:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        points = out.setdefault(metric.name, [])
                        if metric.HasField("sum"):
                            points += [(attributes(p.attributes), p.as_int or p.as_double) for p in metric.sum.data_points]
                        elif metric.HasField("gauge"):
                            points += [(attributes(p.attributes), p.as_int or p.as_double)
                                       for p in metric.gauge.data_points]
                        elif metric.HasField("histogram"):
                            points += [(attributes(p.attributes), p.count) for p in metric.histogram.data_points]
        return out


    def metric_kinds(self) -> dict:
        """{metric name: (kind, unit, resource attributes)} over everything received; kind is "counter" (a
        monotonic sum), "sum", "gauge" or "histogram", as an exporter to Prometheus names them."""
        out: dict = {}
        for request in self.metrics:
            for resource_metrics in request.resource_metrics:
                resource = attributes(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        if kind == "sum" and metric.sum.is_monotonic:
                            kind = "counter"
                        out[metric.name] = (kind, metric.unit, resource)
        return out


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attributes(kvs) -> dict:
    return {kv.key: value(kv.value) for kv in kvs}


class Hanging:
    """Accepts TCP connections on loopback and never answers, never closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list = []
        self._stop = threading.Event()
        self.sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self):
        self._stop.set()
        for conn in self.held:
            conn.close()
        self.sock.close()

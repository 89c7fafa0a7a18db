"""OpenTelemetry through a real OTLP/HTTP receiver on loopback."""

import os
import socket
import time

import pytest

from tests.conftest import make_tree, objects, run_obsbatch, server_args
from obsbatch.testing import otlp
from obsbatch.testing.faultproxy import Fault


def test_one_trace_per_run_with_summary_upload_spans_skip_events_and_metrics(tmp_path, s3server, prefix, proxy,
                                                                            receiver, holder):
    src = tmp_path / "src"
    make_tree(src, {"a.txt": b"aa", "b/c.txt": b"ccc", "d.txt": b"d", "denied.txt": b"no", "busy.log": b"log"})
    proxy.add(Fault(method="PUT", path=r"denied\.txt", action="status", status=403, code="AccessDenied", times=None))
    busy = holder((src / "busy.log", os.O_WRONLY))
    env = dict(s3server.env(), OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    result = run_obsbatch("--source", src, *server_args(s3server, prefix, proxy.endpoint), "--manifest",
                          tmp_path / "run.jsonl", env=env)
    assert result.returncode == 1, result  # denied.txt failed
    assert not result.find("telemetry.export_failed") and not result.find("telemetry.disabled")

    spans = receiver.spans()
    [(root, resource)] = [(s, r) for s, r in spans if s.name == "obsbatch.run"]
    assert resource["service.name"] == "obsbatch" and resource["host.name"] == socket.gethostname()  # --host-id
    attrs = otlp.attributes(root.attributes)
    assert attrs["obsbatch.files.uploaded"] == 3 and attrs["obsbatch.files.failed"] == 1
    assert attrs["obsbatch.files.deferred"] == 1 and attrs["obsbatch.files.scanned"] == 5
    assert attrs["obsbatch.bytes.uploaded"] == 6 and attrs["obsbatch.bucket"] == s3server.bucket
    assert attrs["obsbatch.prefix"] == prefix and attrs["obsbatch.source"] == str(src)
    assert root.status.code == 2  # ERROR: the run exited 1
    assert attrs["obsbatch.manifest.head"] == result.summary["manifest_head"]  # the manifest's anchor (#14)
    assert attrs["obsbatch.snapshot.head"] == result.summary["snapshot_head"]  # the snapshot's (#20)

    uploads = [s for s, _ in spans if s.name == "obsbatch.upload"]
    assert sorted(otlp.attributes(s.attributes)["obsbatch.key"] for s in uploads) == sorted(
        prefix + k for k in ("a.txt", "b/c.txt", "d.txt", "denied.txt"))
    assert {s.trace_id for s in uploads} == {root.trace_id}
    assert {s.parent_span_id for s in uploads} == {root.span_id}
    [denied] = [s for s in uploads if otlp.attributes(s.attributes)["obsbatch.key"].endswith("denied.txt")]
    assert denied.status.code == 2 and otlp.attributes(denied.attributes)["error.type"] == "AccessDenied"
    assert all(s.end_time_unix_nano > s.start_time_unix_nano >= root.start_time_unix_nano for s in uploads)

    [event] = [e for e in root.events if e.name == "file.deferred"]
    event_attrs = otlp.attributes(event.attributes)
    assert event_attrs["obsbatch.reason"] == "open_for_write" and event_attrs["obsbatch.holder.pids"] == [busy.pid]

    points = receiver.metric_points()
    files = {(a["obsbatch.outcome"], a.get("obsbatch.reason")): v for a, v in points["obsbatch.files"]}
    assert files[("uploaded", None)] == 3 and files[("failed", None)] == 1 and files[("deferred", "open_for_write")] == 1
    assert sum(v for a, v in points["obsbatch.upload.duration"]) == 4


def test_a_run_ended_by_a_fatal_error_exports_its_exit_code_and_an_error_span(tmp_path, s3server, prefix, receiver):
    """The failed-run alert (contrib/obsbatch-alerts.yml) reads obsbatch.run.exit_code: a run that never got a
    summary (here the pre-flight finds no such bucket, exit 2) must export it too, with its root span in error."""
    make_tree(tmp_path / "src", {"a.txt": b"a"})
    result = run_obsbatch("--source", tmp_path / "src", *server_args(s3server, prefix, bucket="no-such-bucket-here"),
                          "--no-state", env=dict(s3server.env(), OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint))
    assert result.returncode == 2, result
    assert receiver.metric_points()["obsbatch.run.exit_code"] == [(
        {"obsbatch.bucket": "no-such-bucket-here", "obsbatch.prefix": prefix}, 2)]
    [root] = [span for span, _ in receiver.spans() if span.name == "obsbatch.run"]
    assert root.status.code == 2 and otlp.attributes(root.attributes)["error.type"] == "PreflightError", root


def test_otel_endpoint_flag_and_no_telemetry_flag(tmp_path, s3server, prefix, receiver):
    make_tree(tmp_path, {"a.txt": b"a"})
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), "--otel-endpoint", receiver.endpoint,
                          env=s3server.env())
    assert result.returncode == 0, result
    assert "/v1/traces" in receiver.paths and "/v1/metrics" in receiver.paths
    receiver.paths.clear()
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix + "2/"), "--no-telemetry",
                          env=dict(s3server.env(), OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint))
    assert result.returncode == 0, result
    assert receiver.paths == []


def test_nothing_configured_exports_nothing_not_even_to_the_sdk_default(tmp_path, s3server, prefix):
    try:
        default = otlp.Receiver(port=4318)  # where the SDK would send with no endpoint configured
    except OSError:
        pytest.skip("port 4318 is in use here")
    try:
        make_tree(tmp_path, {"a.txt": b"a"})
        result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), env=s3server.env())
    finally:
        default.close()
    assert result.returncode == 0, result
    assert default.paths == [] and not [e for e in result.events if e["event"].startswith("telemetry.")]


def _dead_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["dead-port", "never-answers"])
def test_unreachable_receiver_costs_seconds_not_uploads(tmp_path, s3, s3server, prefix, kind):
    files = make_tree(tmp_path, {f"f{i}.txt": b"x" * i for i in range(20)})
    hanging = otlp.Hanging() if kind == "never-answers" else None
    endpoint = hanging.endpoint if hanging else _dead_endpoint()
    try:
        started = time.monotonic()
        result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix),
                              env=dict(s3server.env(), OTEL_EXPORTER_OTLP_ENDPOINT=endpoint))
        elapsed = time.monotonic() - started
    finally:
        if hanging:
            hanging.close()
    assert result.returncode == 0, result
    assert objects(s3, s3server.bucket, prefix) == files
    [warning] = result.find("telemetry.export_failed")
    assert warning["detail"].startswith("traces or metrics may be missing")
    assert elapsed < 8, f"telemetry held the run for {elapsed:.1f}s"  # ~1 s run + 3 s exporter timeout
    assert "Traceback" not in result.stderr and all(line.startswith("{") for line in result.stderr.splitlines())

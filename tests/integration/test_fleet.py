"""A fleet into one bucket (issue #22): --host-id everywhere a run names itself, the fleet markers each run
leaves, and `obsbatch snapshots --all [--stale]` over them. Against the session's SeaweedFS."""

from __future__ import annotations

import json
import time
import urllib.parse

from tests.conftest import make_tree, run_command, run_obsbatch, server_args


def markers(s3, bucket: str, host: str) -> dict:
    """The fleet markers of `host` in the bucket: {prefix: parsed body}."""
    area = f".obsbatch/fleet/{host}/"
    found = {}
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=area).get("Contents", []):
        name = obj["Key"][len(area):]
        found[urllib.parse.unquote(name[:-len(".json")])] = json.loads(
            s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    return found


def fleet(s3server, prefix: str, *extra):
    """`obsbatch snapshots --all` narrowed to this test's prefixes (the session bucket holds every test's)."""
    return run_command("snapshots", *server_args(s3server, prefix), "--all", "--json", *extra, env=s3server.env())


def test_host_id_names_the_host_in_every_log_line_record_manifest_and_marker(tmp_path, s3, s3server, prefix):
    make_tree(tmp_path / "src", {"a.txt": b"a", "d/b.txt": b"bb"})
    manifest = tmp_path / "run.jsonl"
    result = run_obsbatch("--source", tmp_path / "src", *server_args(s3server, prefix), "--no-state",
                          "--host-id", "web-01.example", "--manifest", manifest, "--debug", "debug",
                          env=s3server.env())
    assert result.returncode == 0, result
    assert result.events and {event.get("host") for event in result.events} == {"web-01.example"}, result
    assert any(event.get("event") == "upload.ok" for event in result.events)  # the workers' lines too
    header = json.loads(manifest.read_text().splitlines()[0])
    assert header["host"] == "web-01.example"
    [written] = result.find("snapshot.written")
    record = json.loads(s3.get_object(Bucket=s3server.bucket, Key=written["key"])["Body"].read())
    assert record["host"] == "web-01.example"
    marker = markers(s3, s3server.bucket, "web-01.example")[prefix]
    assert marker == {name: record[name] for name in ("host", "prefix", "id", "time", "files", "bytes",
                                                       "unstored", "exit_code", "head")}
    # The default is the host name; a value that cannot be part of a key is one sentence, exit 2.
    import socket

    default = run_obsbatch("--source", tmp_path / "src", *server_args(s3server, prefix), "--no-state",
                           env=s3server.env())
    assert {event.get("host") for event in default.events} == {socket.gethostname()}, default
    bad = run_obsbatch("--source", tmp_path / "src", *server_args(s3server, prefix), "--host-id", "a/b",
                       env=s3server.env())
    assert bad.returncode == 2 and "not a valid host id" in bad.stderr and "Traceback" not in bad.stderr, bad


def test_the_fleet_view_lists_each_hosts_latest_and_stale_names_the_old_ones(tmp_path, s3, s3server, prefix, proxy):
    make_tree(tmp_path / "src", {"a.txt": b"a"})
    latest = {}
    for host, sub in (("alpha", "daily/"), ("alpha", "weekly/"), ("beta", "daily/"), ("beta", "daily/")):
        result = run_obsbatch("--source", tmp_path / "src", *server_args(s3server, prefix + host + "/" + sub),
                              "--no-state", "--host-id", host, env=s3server.env())
        assert result.returncode == 0, result
        latest[(host, prefix + host + "/" + sub)] = result.summary["snapshot"]
    listed = fleet(s3server, prefix)
    assert listed.returncode == 0, listed
    rows = json.loads(listed.stdout.strip().splitlines()[0])
    # One row per (host, prefix), the latest snapshot of each (beta's second run, not its first), in order.
    assert [(row["host"], row["prefix"], row["id"]) for row in rows] == [
        (host, where, snapshot) for (host, where), snapshot in sorted(latest.items())]
    assert all(row["files"] == 1 and row["bytes"] == 1 and row["exit_code"] == 0 for row in rows), rows
    assert fleet(s3server, prefix, "--stale", "1h").returncode == 0
    # Narrowed by --prefix, only the markers under it are read (the prefix is in each marker's key): one listing
    # and alpha's two markers, not every marker in the bucket.
    seen = len(proxy.seen)
    narrowed = run_command("snapshots", *server_args(s3server, prefix + "alpha/", proxy.endpoint), "--all", "--json",
                           env=s3server.env())
    assert [row["prefix"] for row in json.loads(narrowed.stdout.strip().splitlines()[0])] == [
        prefix + "alpha/daily/", prefix + "alpha/weekly/"], narrowed
    marker_gets = [path for method, path, *_ in proxy.seen[seen:] if method == "GET" and path.endswith(".json")]
    assert len(marker_gets) == 2, proxy.seen[seen:]

    # A host that has not backed up for three days: its marker as that run left it.
    old_key = f".obsbatch/fleet/beta/{urllib.parse.quote(prefix + 'beta/daily/', safe='')}.json"
    old = json.loads(s3.get_object(Bucket=s3server.bucket, Key=old_key)["Body"].read())
    old["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * 86400))
    s3.put_object(Bucket=s3server.bucket, Key=old_key, Body=json.dumps(old).encode())
    stale = fleet(s3server, prefix, "--stale", "26h")
    assert stale.returncode == 1, stale
    assert [row["host"] for row in json.loads(stale.stdout.strip().splitlines()[0]) if row.get("stale")] == ["beta"]
    [named] = stale.find("snapshots.stale")
    assert named["snapshot_host"] == "beta" and named["prefix"] == prefix + "beta/daily/", named
    assert stale.summary["stale"] == 1
    assert fleet(s3server, prefix, "--stale", "4d").returncode == 0
    # The table says it too, for a person.
    table = run_command("snapshots", *server_args(s3server, prefix), "--all", "--stale", "26h", env=s3server.env())
    lines = table.stdout.strip().splitlines()[:-1]  # the last line is --summary json
    assert [line.split()[0] for line in lines if line.endswith("STALE")] == ["beta"], table

    # A marker that is not what a run writes is named, damaged, and the exit is 1.
    s3.put_object(Bucket=s3server.bucket, Key=f".obsbatch/fleet/gamma/{urllib.parse.quote(prefix + 'x/', safe='')}.json",
                  Body=b"not json")
    damaged = fleet(s3server, prefix)
    assert damaged.returncode == 1, damaged
    assert {"host": "gamma", "prefix": prefix + "x/", "damaged": True} in json.loads(
        damaged.stdout.strip().splitlines()[0])


def test_stale_for_one_prefix_is_its_latest_snapshot_or_none(tmp_path, s3server, prefix):
    make_tree(tmp_path / "src", {"a.txt": b"a"})
    args = server_args(s3server, prefix)
    none = run_command("snapshots", *args, "--stale", "1h", env=s3server.env())
    assert none.returncode == 1 and none.find("snapshots.stale"), none
    assert run_obsbatch("--source", tmp_path / "src", *args, "--no-state", env=s3server.env()).returncode == 0
    fresh = run_command("snapshots", *args, "--stale", "1h", env=s3server.env())
    assert fresh.returncode == 0 and not fresh.find("snapshots.stale"), fresh
    time.sleep(2.1)
    old = run_command("snapshots", *args, "--stale", "1s", env=s3server.env())
    assert old.returncode == 1 and len(old.find("snapshots.stale")) == 1, old

"""The shipped systemd units, environment file, bucket lifecycle examples and alert rules."""

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest


CONTRIB = Path(__file__).resolve().parents[2] / "contrib"


UNITS = ("obsbatch.service", "obsbatch.timer", "obsbatch@.service", "obsbatch@.timer", "obsbatch-verify@.service",
         "obsbatch-forget@.service", "obsbatch-forget@.timer",
         "obsbatch-verify@.timer")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze (Debian package systemd) missing")
def test_units_pass_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart= exists; point it at this checkout's obsbatch, everything else as shipped.
    # A template is verified through an instance of it (systemd-analyze loads obsbatch@.service for
    # obsbatch@home.service from the same directory).
    obsbatch = shutil.which("obsbatch") or str(Path(__import__("sys").executable).parent / "obsbatch")
    for name in UNITS:
        text = (CONTRIB / name).read_text()
        text = re.sub(r"^ExecStart=\S+", f"ExecStart={obsbatch}", text, flags=re.M)
        text = re.sub(r"^EnvironmentFile=.*$", f"EnvironmentFile={CONTRIB / 'obsbatch.env.example'}", text, flags=re.M)
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / name.replace("@.", "@home.")) for name in UNITS)],
                          capture_output=True, text=True)
    # Unknown or misspelt directives are only warnings (exit 0), so any output at all is a failure.
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr


def test_the_template_unit_is_the_single_one_but_for_its_instance():
    """obsbatch@.service (several trees on one host) keeps every line of obsbatch.service but those naming
    the instance: its own environment file and state directory (so its journal and lock), and its name."""
    def directives(name: str) -> list:
        return [line for line in (CONTRIB / name).read_text().splitlines() if line and not line.startswith("#")]

    single, template = directives("obsbatch.service"), directives("obsbatch@.service")
    differ = [(a, b) for a, b in zip(single, template) if a != b]
    assert len(single) == len(template) and [b for _, b in differ] == [
        "Description=obsbatch backup of %i to S3-compatible storage", "EnvironmentFile=/etc/obsbatch/%i.env",
        "StateDirectory=obsbatch/%i"], differ


def test_service_keeps_what_obsbatch_relies_on():
    unit = (CONTRIB / "obsbatch.service").read_text()
    for line in ("Type=notify", "KillMode=mixed", "StateDirectory=obsbatch", "NoNewPrivileges=yes",
                 "AmbientCapabilities=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH", "ProtectSystem=strict"):
        assert re.search(rf"^{re.escape(line)}$", unit, re.M), line
    assert not re.search(r"^(ProtectProc=invisible|ProcSubset=pid)", unit, re.M)  # would blind the fd check


def test_env_example_names_every_option():
    """Every variable of every command (backup, restore, verify) is in the example."""
    from obsbatch import options as commands

    text = (CONTRIB / "obsbatch.env.example").read_text()
    missing = [name for name in sorted(commands.environment_names()) if not re.search(rf"^#?{name}=", text, re.M)]
    assert missing == []


def test_env_example_parses_into_a_valid_config():
    from obsbatch.commands.backup import parse

    env = dict(line.split("=", 1) for line in (CONTRIB / "obsbatch.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    config = parse([], env)
    assert config.store.bucket == "my-backups" and config.transfer.max_concurrent is None and config.exclude == ("*.tmp", "*.part")


def test_lifecycle_example_is_accepted_by_a_real_s3_server(s3):
    """contrib's AbortIncompleteMultipartUpload rule (README "Failure modes") is a configuration S3 takes."""
    import json
    import uuid

    config = json.loads((CONTRIB / "lifecycle-abort-incomplete-multipart.json").read_text())
    bucket = f"lifecycle-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=config)
        [rule] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert rule["Status"] == "Enabled" and rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    finally:
        s3.delete_bucket(Bucket=bucket)


def test_env_example_lists_only_variables_obsbatch_reads():
    from obsbatch import options as commands

    names = re.findall(r"^#?(OBSBATCH_[A-Z0-9_]+)=", (CONTRIB / "obsbatch.env.example").read_text(), re.M)
    assert names and sorted(set(names) - commands.environment_names()) == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze (Debian package systemd) missing")
def test_the_unit_verifies_against_obsbatch_installed_as_readme_says(tmp_path):
    """README installs into a venv under /opt/obsbatch (PEP 668 refuses `sudo pip install .` on Debian and
    Ubuntu); the unit's ExecStart must be that venv's obsbatch. Here the venv goes under tmp_path/opt/obsbatch,
    made by README's own commands, and only that prefix of ExecStart is moved there."""
    import sys

    readme = (CONTRIB.parent / "README.md").read_text()
    assert "sudo python3 -m venv /opt/obsbatch" in readme and "sudo /opt/obsbatch/bin/pip install ." in readme
    unit = (CONTRIB / "obsbatch.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(\S+)", unit, re.M)
    assert exec_start == "/opt/obsbatch/bin/obsbatch"
    venv = tmp_path / "opt" / "obsbatch"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The project's own pip installs into the new venv's interpreter; --no-deps: the unit check needs the
    # console script, not boto3 and the rest again.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", str(CONTRIB.parent)], check=True, capture_output=True)
    assert (venv / "bin" / "obsbatch").is_file()
    text = unit.replace("ExecStart=/opt/obsbatch/", f"ExecStart={venv}/")
    text = re.sub(r"^EnvironmentFile=.*$", f"EnvironmentFile={CONTRIB / 'obsbatch.env.example'}", text, flags=re.M)
    (tmp_path / "obsbatch.service").write_text(text)
    (tmp_path / "obsbatch.timer").write_text((CONTRIB / "obsbatch.timer").read_text())
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "obsbatch.service"),
                           str(tmp_path / "obsbatch.timer")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stderr


def test_noncurrent_version_expiry_rule_is_accepted_by_a_real_s3_server(moto):
    """contrib's NoncurrentVersionExpiration rule (README "Snapshots": retention is the store's job) is a
    configuration a versioned bucket takes."""
    import json
    import uuid

    client = moto.client()
    config = json.loads((CONTRIB / "lifecycle-expire-noncurrent-versions.json").read_text())
    bucket = f"lifecycle-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=config)
    [rule] = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Status"] == "Enabled" and rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 90


def prometheus_name(name: str, kind: str, unit: str) -> str:
    """The name the collector's Prometheus exporter gives an OTLP metric (contrib/otel-collector.yaml): dots to
    underscores, the unit's suffix (annotations in braces dropped), counters ending in _total."""
    suffix = {"s": "_seconds", "By": "_bytes"}.get(unit, "")
    return name.replace(".", "_") + suffix + ("_total" if kind == "counter" else "")


def test_alert_rules_use_only_what_obsbatch_exports(tmp_path, s3server, prefix, receiver):
    """contrib/obsbatch-alerts.yml names metrics and labels; a real run, exported to a real OTLP receiver, must
    produce every one of them (a renamed metric would otherwise silently never alert)."""
    import yaml

    from tests.conftest import make_tree, run_obsbatch, server_args

    make_tree(tmp_path / "src", {"a.txt": b"a"})
    result = run_obsbatch("--source", tmp_path / "src", *server_args(s3server, prefix), "--no-state", "--host-id",
                          "web-01", env=dict(s3server.env(), OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint))
    assert result.returncode == 0, result
    kinds = receiver.metric_kinds()
    exported = {prometheus_name(name, kind, unit) for name, (kind, unit, _) in kinds.items()}
    assert {"obsbatch_run_exit_code", "obsbatch_snapshot_time_seconds"} <= exported, exported
    points = receiver.metric_points()
    [(attributes, exit_code)] = points["obsbatch.run.exit_code"]
    [(_, taken)] = points["obsbatch.snapshot.time"]
    assert exit_code == 0 and abs(taken - time.time()) < 120
    # Labels: the point's attributes, and (resource_to_telemetry_conversion) the resource's, dots to underscores.
    labels = {name.replace(".", "_") for name in attributes} | {
        name.replace(".", "_") for name in kinds["obsbatch.run.exit_code"][2]}
    assert kinds["obsbatch.run.exit_code"][2]["host.name"] == "web-01"

    rules = yaml.safe_load((CONTRIB / "obsbatch-alerts.yml").read_text())
    [group] = rules["groups"]
    assert {rule["alert"] for rule in group["rules"]} == {"ObsbatchRunFailed", "ObsbatchFilesStuck",
                                                          "ObsbatchSnapshotStale"}
    for rule in group["rules"]:
        used = set(re.findall(r"\bobsbatch_[a-z_]+", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)
        named = set(re.findall(r"\$labels\.([a-z_]+)", json.dumps(rule["annotations"])))
        assert named <= labels, (rule["alert"], named - labels)
    collector = yaml.safe_load((CONTRIB / "otel-collector.yaml").read_text())
    assert collector["exporters"]["prometheus"]["resource_to_telemetry_conversion"]["enabled"] is True
    assert collector["service"]["pipelines"]["metrics"]["receivers"] == ["otlp"]

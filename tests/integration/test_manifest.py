"""The hash-chained run manifest, and `obsbatch verify-manifest`."""

import json
import subprocess
import sys

import pytest

from tests.conftest import AGE_RULE, REPO, make_tree, run_obsbatch, server_args, settled
from obsbatch.testing.ed25519keys import keypair


def verify(*args):
    return subprocess.run([sys.executable, "-m", "obsbatch", "verify-manifest", *map(str, args)],
                          capture_output=True, text=True, cwd=str(REPO))


@pytest.fixture
def manifest_run(tmp_path, s3, s3server, prefix):
    src, manifest = tmp_path / "src", tmp_path / "run.jsonl"
    make_tree(src, {"a.txt": b"alpha", "sub/b.bin": b"\x00" * 100})
    settled(AGE_RULE)
    (src / "young.txt").write_bytes(b"still being written")
    result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--manifest", manifest,
                          "--upload-manifest", "--min-age", AGE_RULE, env=s3server.env())
    assert result.returncode == 0, result
    return result, manifest


def test_manifest_records_every_decision_verifies_and_is_uploaded_beside_the_data(manifest_run, s3, s3server,
                                                                                  prefix):
    result, manifest = manifest_run
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[-1]["type"] == "summary"
    files = {line["path"].rsplit("/", 1)[-1]: line for line in lines if line["type"] == "file"}
    assert files["a.txt"]["outcome"] == "uploaded" and files["a.txt"]["key"] == prefix + "a.txt"
    assert files["a.txt"]["sha256"] == "8ed3f6ad685b959ead7022518e1af76cd816f8e8ec7ccdda1ed4018e8f2223f8"
    assert files["a.txt"]["etag"] and files["a.txt"]["mtime"] and files["a.txt"]["size"] == 5
    assert files["young.txt"]["outcome"] == "deferred" and files["young.txt"]["reason"] == "too_new"
    assert lines[-1]["uploaded"] == 2 and lines[-1]["deferred"] == {"too_new": 1}

    check = verify(manifest)
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout)
    assert report["files"] == 3 and report["chain_head"] == lines[-1]["chain"]

    [written] = result.find("manifest.written")
    key = f"{prefix.rstrip('/')}.obsbatch/manifests/{lines[0]['run_id']}.jsonl"
    assert written["key"] == key and not key.startswith(prefix)  # beside the data, never among it
    stored = s3.get_object(Bucket=s3server.bucket, Key=key)["Body"].read()
    assert stored == manifest.read_bytes()


@pytest.mark.parametrize("tamper", ["edit-a-field", "drop-a-line", "swap-lines", "cut-short"])
def test_any_tampering_is_detected(manifest_run, tamper):
    _, manifest = manifest_run
    lines = manifest.read_text().splitlines(keepends=True)
    if tamper == "edit-a-field":
        record = json.loads(lines[1])
        record["size"] += 1  # the chain value is left as it was
        lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    elif tamper == "drop-a-line":
        del lines[2]
    elif tamper == "swap-lines":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines = lines[:-1]
    manifest.write_text("".join(lines))
    check = verify(manifest)
    assert check.returncode == 1, check
    assert "does not verify" in check.stderr and "Traceback" not in check.stderr


def _rechain(lines: list) -> list:
    """What a forger with write access does: edit a record, then recompute every link after it."""
    from obsbatch.reporting.manifest import GENESIS, _canonical, _link

    chain, out = GENESIS, []
    for line in lines:
        record = json.loads(line)
        record.pop("chain")
        chain = _link(chain, record)
        out.append(_canonical({**record, "chain": chain}).decode() + "\n")
    return out


def test_a_rewritten_manifest_fails_against_its_anchor(manifest_run):
    """A chain alone proves nothing against a rewrite; the head logged at the end of the run does (#14)."""
    result, manifest = manifest_run
    head = result.summary["manifest_head"]
    assert head and verify(manifest, "--expect-head", head).returncode == 0
    lines = manifest.read_text().splitlines(keepends=True)
    record = json.loads(lines[1])
    record["sha256"] = "0" * 64
    lines[1] = json.dumps(record) + "\n"
    manifest.write_text("".join(_rechain(lines)))
    assert verify(manifest).returncode == 0  # the recomputed chain holds...
    check = verify(manifest, "--expect-head", head)  # ...but no longer ends at the anchor
    assert check.returncode == 1 and "not at the expected head" in check.stderr, check


def test_successive_runs_manifests_form_one_chain(tmp_path, s3server, prefix):
    src, state = tmp_path / "src", tmp_path / "state.db"
    make_tree(src, {"a.txt": b"alpha"})
    paths, heads = [tmp_path / f"run{i}.jsonl" for i in range(3)], []
    for i, path in enumerate(paths):
        make_tree(src, {f"new{i}.txt": b"x" * i})
        result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--manifest", path, "--state", state,
                              env=s3server.env())
        assert result.returncode == 0, result
        heads.append(result.summary["manifest_head"])
    cited = [json.loads(path.read_text().splitlines()[0])["previous_head"] for path in paths]
    assert cited == [None, heads[0], heads[1]]
    ok = verify(*paths, "--expect-head", heads[-1])
    assert ok.returncode == 0 and json.loads(ok.stdout)["manifests"] == 3, ok
    dropped = verify(paths[0], paths[2])  # a run's manifest left out of the sequence
    assert dropped.returncode == 1 and "does not follow" in dropped.stderr, dropped
    assert verify(paths[1], paths[0]).returncode == 1
    assert verify(paths[0], "--expect-head", "xyz").returncode == 2


def test_a_signed_manifest_verifies_with_the_public_key(tmp_path, s3server, prefix):
    private, public = keypair(tmp_path)
    _, other = keypair(tmp_path, "other")
    src, manifest = tmp_path / "src", tmp_path / "run.jsonl"
    make_tree(src, {"a.txt": b"alpha"})
    result = run_obsbatch("--source", src, *server_args(s3server, prefix), "--no-state", "--manifest", manifest,
                          "--manifest-signing-key", private, env=s3server.env())
    assert result.returncode == 0, result
    [written] = result.find("manifest.written")
    assert written["signature"] == str(manifest) + ".sig"
    ok = verify(manifest, "--public-key", public, "--expect-head", result.summary["manifest_head"])
    assert ok.returncode == 0 and json.loads(ok.stdout)["signed"] is True, ok
    wrong = verify(manifest, "--public-key", other)
    assert wrong.returncode == 1 and "does not verify with this public key" in wrong.stderr
    unusable = run_obsbatch("--source", src, *server_args(s3server, prefix), "--manifest", manifest,
                            "--manifest-signing-key", public, env=s3server.env())
    assert unusable.returncode == 2 and "Traceback" not in unusable.stderr, unusable

"""Ed25519 signatures over a manifest head (issue #14, optional): the sidecar, and each way it fails."""

import json

import pytest

from obsbatch import signing
from obsbatch.errors import UsageError
from obsbatch.testing.ed25519keys import keypair

HEAD = "ab" * 32


def test_a_signed_head_verifies_with_its_public_key_only(tmp_path):
    private, public = keypair(tmp_path)
    _, other = keypair(tmp_path, "other")
    manifest = str(tmp_path / "run.jsonl")
    signing.sign(manifest, HEAD, private)
    assert json.loads(open(manifest + ".sig").read())["head"] == HEAD
    assert signing.check(manifest, HEAD, public) is None
    assert "does not verify" in signing.check(manifest, HEAD, other)
    assert "ends at" in signing.check(manifest, "cd" * 32, public)  # a manifest rewritten after signing


def test_a_forged_or_missing_signature_is_named(tmp_path):
    private, public = keypair(tmp_path)
    manifest = str(tmp_path / "run.jsonl")
    assert "no signature beside it" in signing.check(manifest, HEAD, public)
    signing.sign(manifest, HEAD, private)
    record = json.loads(open(manifest + ".sig").read())
    record["signature"] = record["signature"][::-1]
    open(manifest + ".sig", "w").write(json.dumps(record))
    assert signing.check(manifest, HEAD, public) is not None


def test_a_bad_key_is_one_sentence_without_its_content(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n")
    with pytest.raises(UsageError) as err:
        signing.load_private_key(str(bad))
    assert "not an unencrypted PEM key" in str(err.value) and "SECRET" not in str(err.value)
    _, public = keypair(tmp_path)
    with pytest.raises(UsageError, match="not an Ed25519 key|not an unencrypted PEM"):
        signing.load_private_key(public)

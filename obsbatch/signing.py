"""Ed25519 signatures over a manifest's chain head and a snapshot record's head (optional): `--signing-key`
(once `--manifest-signing-key`) at backup; `--public-key` at restore, verify, snapshots and verify-manifest.

The head seals every line of the manifest; a signature over it, by a key the backup host holds and the
auditor's public key checks, proves who wrote that manifest, where the journald/trace anchor proves only
that it is the one the run logged. The signature goes to a sidecar file, `<manifest>.sig` (JSON: the head,
the base64 signature, the signer's raw public key): it can't sit inside the chained lines it signs.

Ed25519 comes from the `cryptography` package (the `signing` extra): the standard library has none, and a
signature scheme is not code to write by hand. It is imported only when a key is given.
"""

from __future__ import annotations

import base64
import json
from typing import Optional

from obsbatch.errors import UsageError

SUFFIX = ".sig"
_MISSING = "needs the cryptography package: pip install 'obsbatch[signing]'"


def _serialization():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise UsageError(f"Ed25519 signing {_MISSING}") from None
    return serialization, ed25519


def load_private_key(path: str):
    """The Ed25519 private key in a PEM file (`openssl genpkey -algorithm ed25519`); UsageError otherwise,
    never with the file's content."""
    serialization, ed25519 = _serialization()
    return _load_pem(path, "--signing-key", lambda data: serialization.load_pem_private_key(data, None),
                     ed25519.Ed25519PrivateKey)


def load_public_key(path: str):
    """The Ed25519 public key in a PEM file (`openssl pkey -pubout`); UsageError otherwise."""
    serialization, ed25519 = _serialization()
    return _load_pem(path, "--public-key", serialization.load_pem_public_key, ed25519.Ed25519PublicKey)


def _load_pem(path: str, flag: str, load, kind: type):
    try:
        with open(path, "rb") as f:
            key = load(f.read())
    except OSError as exc:
        raise UsageError(f"{flag} {path!r} cannot be read: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise UsageError(f"{flag} {path!r} is not an unencrypted PEM key") from None
    if not isinstance(key, kind):
        raise UsageError(f"{flag} {path!r} is not an Ed25519 key")
    return key


def _raw_public(public_key) -> str:
    serialization, _ = _serialization()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def signature(head: str, key_path: str) -> dict:
    """The signature record of `head` by the key in `key_path` (what a `.sig` file holds)."""
    key = load_private_key(key_path)
    return {"alg": "ed25519", "head": head, "signature": base64.b64encode(key.sign(head.encode("ascii"))).decode(),
            "public_key": _raw_public(key.public_key())}


def sign(manifest_path: str, head: str, key_path: str) -> str:
    """Sign `head` with the key in `key_path`, write `<manifest>.sig`; returns the base64 signature."""
    record = signature(head, key_path)
    with open(manifest_path + SUFFIX, "w", encoding="utf-8") as f:
        json.dump(record, f, sort_keys=True)
        f.write("\n")
    return record["signature"]


def check(manifest_path: str, head: str, public_key_path: str) -> Optional[str]:
    """None if `<manifest>.sig` holds a valid signature of `head` by the public key; else why not."""
    public_key = load_public_key(public_key_path)
    try:
        with open(manifest_path + SUFFIX, "rb") as f:
            body = f.read()
    except OSError as exc:
        return f"no signature beside it ({manifest_path + SUFFIX}: {exc.strerror})"
    why = checked(body, head, public_key)
    if why == _NOT_A_SIGNATURE:
        return f"{manifest_path + SUFFIX} is not a signature file"
    return why


_NOT_A_SIGNATURE = "it is not a signature record"


def checked(body: bytes, head: str, public_key) -> Optional[str]:
    """None if `body` (a `.sig` record, as `signature` makes them) is a valid signature of `head` by
    `public_key` (load_public_key); else why not, in a few words. The record's own `public_key` field is never
    trusted: whoever forged a record could name their own key there."""
    from cryptography.exceptions import InvalidSignature

    try:
        record = json.loads(body)
        signature_bytes = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        return _NOT_A_SIGNATURE
    if record.get("head") != head:
        return f"the signature is over head {str(record.get('head'))[:64]}, but what it should sign ends at {head}"
    try:
        public_key.verify(signature_bytes, head.encode("ascii"))
    except InvalidSignature:
        return "the signature does not verify with this public key"
    return None

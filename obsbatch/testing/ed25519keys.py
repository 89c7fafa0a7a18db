"""Ed25519 key pairs in PEM files, as `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write
them, for the manifest-signing tests (issue #14)."""

from __future__ import annotations

from pathlib import Path


def keypair(directory: Path, name: str = "k") -> tuple[str, str]:
    """(private key path, public key path) of a new key pair in `directory`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(private), str(public)

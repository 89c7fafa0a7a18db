"""`obsbatch verify-manifest FILE...`: check run manifests' hash chains, their links and the anchor."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from obsbatch.commands.runner import usage_exit
from obsbatch.errors import ExitCode, FatalExit, UsageError


def main(argv: Sequence[str], started: float) -> int:
    """`obsbatch verify-manifest FILE... [--expect-head HEX]`: 0 if every chain holds, each file follows the
    one before it and the last ends at the expected head; 1 if not; 2 if unreadable or misused."""
    from obsbatch.reporting import manifest

    parser = argparse.ArgumentParser(prog="obsbatch verify-manifest", allow_abbrev=False, description=(
        "Check run manifests' hash chains. Several files: consecutive runs, oldest first; each header must cite "
        "the head of the one before. --expect-head: the head logged when the last run ended (run.summary's "
        "manifest_head, journald, the trace), which whoever rewrites the file cannot recompute."))
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--expect-head", metavar="HEX", type=_hex_digest)
    parser.add_argument("--public-key", metavar="PEM", help="each FILE's head must carry a valid Ed25519 "
                        "signature by this key, in FILE.sig (written by --manifest-signing-key)")
    parser.error = lambda message: usage_exit(f"verify-manifest: {message}")
    options = parser.parse_args(argv)
    try:
        verified = manifest.verify_sequence(options.files, options.expect_head)
        if options.public_key:
            from obsbatch import signing

            for path, result in zip(options.files, verified):
                why = signing.check(path, result.head, options.public_key)
                if why:
                    raise manifest.Broken(f"{path}: {why}")
    except manifest.Broken as exc:
        print(f"obsbatch: the manifest does not verify: {exc}", file=sys.stderr)
        return ExitCode.PARTIAL
    except UsageError as exc:
        usage_exit(f"verify-manifest: {exc}")
    except (OSError, UnicodeDecodeError) as exc:
        message = (f"cannot read a manifest: {getattr(exc, 'filename', None) or ''} "
                   f"{getattr(exc, 'strerror', None) or exc}")
        print(f"obsbatch: {message}", file=sys.stderr)
        raise FatalExit(ExitCode.FATAL, message) from None
    print(json.dumps({"manifest": options.files[-1], "manifests": len(verified), "verified": True,
                      "anchored": options.expect_head is not None, "signed": bool(options.public_key),
                      "files": sum(v.files for v in verified),
                      "chain_head": verified[-1].head}))
    return ExitCode.OK


def _hex_digest(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a SHA-256 head (64 hex digits)")
    return text.lower()

# Sourced by scripts/demo and scripts/test: make .venv (once) and install obsbatch with its test extras
# (they bring the SeaweedFS binary the demo and the tests run). Idempotent and quiet.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# Sourced by scripts/demo, scripts/test and scripts/bench: make .venv (once) and install obsbatch with its
# test extras (they bring the SeaweedFS binary the demo and the tests run), or the extras named in
# VENV_EXTRAS (scripts/bench adds `bench`: the peers it measures; not OBSBATCH_*, which obsbatch reads
# strictly). Idempotent and quiet.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${VENV_EXTRAS:-test}]"

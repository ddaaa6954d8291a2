#!/usr/bin/env bash
# Build {{name}}.wasm, the converter component, from the Python sources.
# Needs python3 (3.10 or later) with venv and pip: componentize-py comes from
# PyPI into .venv at the version requirements.txt pins (or set COMPONENTIZE_PY
# to one already installed).
set -euo pipefail
cd "$(dirname "$0")"
componentize=${COMPONENTIZE_PY:-.venv/bin/componentize-py}
if [ -z "${COMPONENTIZE_PY:-}" ] && [ ! -x .venv/bin/componentize-py ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
# WASI's stdio is kept (no --stub-wasi): a converter's exceptions then reach
# tbgw as their reasons, not as `unreachable` traps.
"$componentize" --quiet -d wit -w {{world}} componentize {{direction}} -o {{name}}.wasm
echo "built {{name}}.wasm"

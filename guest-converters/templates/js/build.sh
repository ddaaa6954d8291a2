#!/usr/bin/env bash
# Build {{name}}.wasm, the converter component, from the JavaScript sources.
# Needs Node.js 20 or later with npm: jco and componentize-js come from the
# npm registry into node_modules at the versions package.json pins (jco
# 1.35.0 with preview2-shim 0.26 fails with `os error 44`).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/@bytecodealliance/jco ]; then
    npm install --no-audit --no-fund --loglevel=error
fi
# WASI's stdio is kept (not --disable all): a converter's exceptions then
# reach tbgw as their reasons, not as `unreachable` traps.
npm run --silent build
echo "built {{name}}.wasm"

#!/usr/bin/env bash
# Run {{name}}.wasm in `tbgw converter test` on input.jsonl: what ThingsBoard
# would receive must be expected.jsonl, and the input lines that fail must be
# those expected-failures.txt lists. TBGW names the tbgw binary (default: the
# one on PATH).
set -euo pipefail
cd "$(dirname "$0")"
tbgw=${TBGW:-tbgw}
status=0
"$tbgw" converter test {{name}}.wasm --config config.json --input input.jsonl {{test_args}} >out.jsonl 2>err.txt || status=$?
cat err.txt >&2
if [ "$status" -gt 1 ]; then
    echo "FAIL: tbgw could not run the converter (exit $status)" >&2
    exit 1
fi
if ! diff -u expected.jsonl out.jsonl >&2; then
    echo "FAIL: what ThingsBoard would get differs from expected.jsonl (- expected, + got)" >&2
    exit 1
fi
# `line N: reason` for a failed message; `line N: dropped ...` is a value left out.
failed=$(grep -E '^line [0-9]+: ' err.txt | grep -v -E '^line [0-9]+: (dropped|no message)' | sed -E 's/^line ([0-9]+): .*/\1/' | sort -n | uniq || true)
if [ "$failed" != "$(grep -v '^#' expected-failures.txt | sort -n | uniq)" ]; then
    echo "FAIL: lines that failed: ${failed:-none}; expected-failures.txt says: $(grep -v '^#' expected-failures.txt | tr '\n' ' ')" >&2
    exit 1
fi
echo "ok: $(wc -l <expected.jsonl | tr -d ' ') outputs as expected; failed lines as expected"

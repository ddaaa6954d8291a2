#!/usr/bin/env bash
# Build {{name}}.wasm, the converter component, from the Rust sources.
# Needs rustup (rust-toolchain.toml names the toolchain and the wasm32-wasip2
# target); the crates come from crates.io at the versions Cargo.lock pins.
set -euo pipefail
cd "$(dirname "$0")"
if command -v rustup >/dev/null 2>&1; then
    rustup target add wasm32-wasip2 >/dev/null
fi
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" {{name}}.wasm
echo "built {{name}}.wasm"

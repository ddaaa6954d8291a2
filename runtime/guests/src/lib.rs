//! The guest converters of `guest-converters/`, compiled to WebAssembly
//! components by this crate's build script.
//!
//! - The built-in converters, embedded in the `tbgw` binary and selected by
//!   name in configs: [`builtin`]; [`BUILTINS`] is generated from the one
//!   list in `build.rs`.
//! - With the `test-guests` feature, the paths of test guests: one that
//!   misbehaves on request ([`PROBE`]), and components built against
//!   contract 0.1.0 ([`PROBE_V0_1`], [`DOWNLINK_V0_1`]), for the runtime's
//!   tests; a user's own converters over the guest SDK
//!   ([`CUSTOM_DOWNLINK`], [`CUSTOM_REGISTERS`]), for the end-to-end tests;
//!   the boundary's bench guests ([`ECHO`], [`ECHO_V0_1`]); one whose
//!   results break the contract ([`CONTRACT_BREAKER`]).

use tbgw_core::Direction;

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// A converter built into tbgw.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The name configs use (`"type": "json"`).
    pub name: &'static str,
    pub direction: Direction,
    /// The component.
    pub wasm: &'static [u8],
}

/// The built-in converter called `name` for `direction`.
pub fn builtin(name: &str, direction: Direction) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name && b.direction == direction)
}

/// The names of the built-in converters for `direction`.
pub fn builtin_names(direction: Direction) -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().filter(move |b| b.direction == direction).map(|b| b.name)
}

/// The probe guest ([`PROBE`]) with a custom section naming `tag`
/// appended: another component (another SHA-256) that behaves the same,
/// for the tests of swaps and uploads.
#[cfg(feature = "test-guests")]
pub fn probe_variant(tag: &str) -> std::io::Result<Vec<u8>> {
    let mut wasm = std::fs::read(PROBE)?;
    let (name, payload) = (b"tbgw-test-version".as_slice(), tag.as_bytes());
    wasm.extend([0u8, (1 + name.len() + payload.len()) as u8, name.len() as u8]);
    wasm.extend(name.iter().chain(payload));
    Ok(wasm)
}

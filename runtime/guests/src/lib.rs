//! The guest converters of `guest-converters/`, compiled to WebAssembly
//! components by this crate's build script.
//!
//! - The built-in converters, embedded in the `tbgw` binary and selected by
//!   name in configs: [`builtin`].
//! - With the `test-guests` feature, the paths of test guests that misbehave
//!   on request ([`PROBE`]), for the runtime's tests.

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

/// Every built-in converter.
pub const BUILTINS: &[Builtin] = &[
    Builtin { name: "json", direction: Direction::Uplink, wasm: JSON_UPLINK },
    Builtin { name: "json", direction: Direction::Downlink, wasm: JSON_DOWNLINK },
    Builtin { name: "modbus", direction: Direction::Uplink, wasm: MODBUS_UPLINK },
    Builtin { name: "modbus", direction: Direction::Downlink, wasm: MODBUS_DOWNLINK },
];

/// The built-in converter called `name` for `direction`.
pub fn builtin(name: &str, direction: Direction) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name && b.direction == direction)
}

/// The names of the built-in converters for `direction`.
pub fn builtin_names(direction: Direction) -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().filter(move |b| b.direction == direction).map(|b| b.name)
}

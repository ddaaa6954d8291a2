//! Components as tbgw receives them: where they come from, what they
//! implement, what they import.

use crate::bindings::{CONTRACT_PACKAGE, CONTRACT_VERSIONS, version_family};
use crate::error::LoadError;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use tbgw_core::Direction;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a converter's component comes from.
#[derive(Debug, Clone)]
pub enum ComponentSource {
    /// Built into tbgw.
    Builtin { name: &'static str, wasm: &'static [u8] },
    /// A `.wasm` file, read when the converter is loaded or swapped.
    File(PathBuf),
    /// Bytes from elsewhere; `label` names them in messages.
    Bytes { label: String, wasm: Arc<[u8]> },
}

impl ComponentSource {
    /// How messages name this source.
    pub fn describe(&self) -> String {
        match self {
            ComponentSource::Builtin { name, .. } => format!("built-in `{name}`"),
            ComponentSource::File(path) => path.display().to_string(),
            ComponentSource::Bytes { label, .. } => label.clone(),
        }
    }

    pub(crate) fn read(&self, converter: &Arc<str>) -> Result<Cow<'_, [u8]>, LoadError> {
        match self {
            ComponentSource::Builtin { wasm, .. } => Ok(Cow::Borrowed(wasm)),
            ComponentSource::Bytes { wasm, .. } => Ok(Cow::Borrowed(wasm)),
            ComponentSource::File(path) => std::fs::read(path).map(Cow::Owned).map_err(|source| LoadError::Read {
                converter: converter.clone(),
                path: path.clone(),
                source,
            }),
        }
    }
}

/// A compiled component, shared by every converter (and version) built from
/// the same bytes.
pub(crate) struct Compiled {
    pub(crate) component: Component,
    pub(crate) sha256: String,
}

/// The contract interfaces a component exports.
pub(crate) fn contract_exports(component: &Component, engine: &Engine) -> Vec<(Direction, String)> {
    component.component_type().exports(engine).filter_map(|(name, _)| parse_contract_export(name)).collect()
}

pub(crate) fn parse_contract_export(name: &str) -> Option<(Direction, String)> {
    let rest = name.strip_prefix(CONTRACT_PACKAGE)?.strip_prefix('/')?;
    let (iface, version) = rest.split_once('@')?;
    let direction = match iface {
        "uplink" => Direction::Uplink,
        "downlink" => Direction::Downlink,
        _ => return None,
    };
    Some((direction, version.to_owned()))
}

/// Why a component does not serve as a converter for `direction`, in words.
pub(crate) fn world_mismatch(component: &Component, engine: &Engine, direction: Direction) -> String {
    let exports = contract_exports(component, engine);
    if let Some((_, version)) = exports.iter().find(|(d, _)| *d == direction) {
        let served: Vec<String> = CONTRACT_VERSIONS.iter().map(|v| format!("{v}.x")).collect();
        return format!(
            "it was built against {CONTRACT_PACKAGE}@{version}, and this tbgw implements {CONTRACT_PACKAGE} {}",
            served.join(" and ")
        );
    }
    if let Some((other, version)) = exports.first() {
        return format!("it implements the {} world ({CONTRACT_PACKAGE}@{version})", other.world());
    }
    let names: Vec<String> = component.component_type().exports(engine).map(|(n, _)| format!("`{n}`")).collect();
    if names.is_empty() {
        "it exports nothing".into()
    } else {
        format!("it exports {} and nothing of {CONTRACT_PACKAGE}", names.join(", "))
    }
}

/// What `tbgw converter inspect` reports about a component.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// SHA-256 of the component's bytes, in hex.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// The converter worlds it implements, with the contract version.
    pub worlds: Vec<(Direction, String)>,
    /// Every export name.
    pub exports: Vec<String>,
    /// Every import, with what tbgw gives it.
    pub imports: Vec<Import>,
}

/// One import of a component.
#[derive(Debug, Clone)]
pub struct Import {
    pub name: String,
    pub status: ImportStatus,
}

/// What tbgw gives a component for one of its imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStatus {
    /// Provided and working.
    Provided(&'static str),
    /// Provided, but every use is refused (sandbox).
    Denied(&'static str),
    /// Not provided: calling it traps.
    Missing,
}

impl Inspection {
    pub(crate) fn new(component: &Component, engine: &Engine, wasm: &[u8], sha256: String) -> Inspection {
        let ty = component.component_type();
        Inspection {
            sha256,
            size: wasm.len(),
            worlds: contract_exports(component, engine),
            exports: ty.exports(engine).map(|(n, _)| n.to_owned()).collect(),
            imports: ty.imports(engine).map(|(n, _)| Import { name: n.to_owned(), status: import_status(n) }).collect(),
        }
    }
}

/// Classify an import by name, as the runtime's linker serves it.
pub(crate) fn import_status(name: &str) -> ImportStatus {
    let (iface, version) = name.split_once('@').unwrap_or((name, ""));
    if CONTRACT_VERSIONS.contains(&version_family(version)) {
        match iface {
            "tbgw:converter/log" => return ImportStatus::Provided("to tbgw's log, tagged with the converter's name"),
            "tbgw:converter/types" => return ImportStatus::Provided("the contract's types"),
            _ => {}
        }
    }
    if !version.starts_with("0.2.") {
        return ImportStatus::Missing;
    }
    match iface {
        "wasi:cli/stdout" | "wasi:cli/stderr" => ImportStatus::Provided("to tbgw's log"),
        "wasi:cli/stdin" => ImportStatus::Provided("empty"),
        "wasi:cli/environment" => ImportStatus::Denied("no variables, no arguments"),
        "wasi:cli/exit" => ImportStatus::Provided("exiting traps the call"),
        "wasi:cli/terminal-input"
        | "wasi:cli/terminal-output"
        | "wasi:cli/terminal-stdin"
        | "wasi:cli/terminal-stdout"
        | "wasi:cli/terminal-stderr" => ImportStatus::Provided("not a terminal"),
        "wasi:clocks/monotonic-clock" | "wasi:clocks/wall-clock" => ImportStatus::Provided("host clocks"),
        "wasi:random/random" | "wasi:random/insecure" | "wasi:random/insecure-seed" => {
            ImportStatus::Provided("host randomness")
        }
        "wasi:io/error" | "wasi:io/poll" | "wasi:io/streams" => ImportStatus::Provided("streams"),
        "wasi:filesystem/types" | "wasi:filesystem/preopens" => ImportStatus::Denied("no directories"),
        i if i.starts_with("wasi:sockets/") => ImportStatus::Denied("no network"),
        _ => ImportStatus::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_export_names() {
        assert_eq!(parse_contract_export("tbgw:converter/uplink@0.1.0"), Some((Direction::Uplink, "0.1.0".into())));
        assert_eq!(parse_contract_export("tbgw:converter/downlink@0.2.1"), Some((Direction::Downlink, "0.2.1".into())));
        assert_eq!(parse_contract_export("tbgw:converter/types@0.1.0"), None);
        assert_eq!(parse_contract_export("wasi:cli/run@0.2.0"), None);
    }

    #[test]
    fn import_classes() {
        assert!(matches!(import_status("wasi:sockets/tcp@0.2.3"), ImportStatus::Denied(_)));
        assert!(matches!(import_status("wasi:filesystem/preopens@0.2.0"), ImportStatus::Denied(_)));
        assert!(matches!(import_status("tbgw:converter/log@0.1.0"), ImportStatus::Provided(_)));
        assert!(matches!(import_status("tbgw:converter/log@0.2.1"), ImportStatus::Provided(_)));
        assert_eq!(import_status("wasi:http/outgoing-handler@0.2.0"), ImportStatus::Missing);
        assert_eq!(import_status("tbgw:converter/log@0.3.0"), ImportStatus::Missing);
    }
}

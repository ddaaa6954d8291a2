//! Converters as the gateway knows them: named as configs and the command
//! line name them (a built-in name, `json`, or the path of a `.wasm`
//! component), loaded from what a connector declares
//! ([`tbgw_core::setup::ConverterDecl`], its `limits` included), and found
//! by name in one [`Registry`] (the file watcher swaps through it; remote
//! upload will); and the converter runtime set up for this machine (its
//! compile cache directory).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tbgw_core::Direction;
use tbgw_core::setup::{ComponentRef, ConverterDecl, LimitsDecl};
use tbgw_wasm::{
    ComponentSource, ConverterInfo, ConverterSpec, DownlinkConverter, Limits, LoadError, Runtime, RuntimeConfig,
    RuntimeError, UplinkConverter,
};

/// A converter name that is neither a built-in nor a `.wasm` path.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown converter `{name}`: the built-in {direction} converters are {builtins}; \
     for your own converter give the path of its .wasm file"
)]
pub struct UnknownConverter {
    pub name: String,
    pub direction: Direction,
    builtins: String,
}

/// Resolve `name` for `direction`: a built-in converter, or the path of a
/// component (relative paths against `base`, e.g. the config's directory).
pub fn resolve(name: &str, direction: Direction, base: Option<&Path>) -> Result<ComponentSource, UnknownConverter> {
    if let Some(b) = tbgw_guests::builtin(name, direction) {
        return Ok(ComponentSource::Builtin { name: b.name, wasm: b.wasm });
    }
    let looks_like_path = name.ends_with(".wasm") || name.contains('/') || name.contains('\\');
    if looks_like_path {
        let path = Path::new(name);
        let path = match base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_owned(),
        };
        return Ok(ComponentSource::File(path));
    }
    let builtins: Vec<String> = tbgw_guests::builtin_names(direction).map(|n| format!("`{n}`")).collect();
    Err(UnknownConverter { name: name.to_owned(), direction, builtins: builtins.join(", ") })
}

/// A converter's limits: the runtime's defaults, with what the config sets.
pub fn limits(decl: LimitsDecl) -> Limits {
    let mut limits = Limits::default();
    if let Some(ms) = decl.timeout_ms {
        limits.per_message = Duration::from_millis(ms);
    }
    if let Some(mib) = decl.memory_mib {
        limits.memory_bytes = mib.saturating_mul(1024 * 1024);
    }
    limits
}

/// Why a declared converter did not load.
#[derive(Debug, thiserror::Error)]
pub enum DeclError {
    #[error(transparent)]
    Unknown(#[from] UnknownConverter),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// What a converter is made of, from its declaration.
pub fn spec(decl: &ConverterDecl, direction: Direction) -> Result<ConverterSpec, UnknownConverter> {
    let component = match &decl.component {
        ComponentRef::Builtin(name) => resolve(name, direction, None)?,
        ComponentRef::File(path) => ComponentSource::File(path.clone()),
    };
    Ok(ConverterSpec { component, config: decl.config.clone(), limits: limits(decl.limits) })
}

/// A loaded converter of either direction.
#[derive(Clone)]
pub enum AnyConverter {
    Uplink(UplinkConverter),
    Downlink(DownlinkConverter),
}

impl AnyConverter {
    /// Load `decl`'s converter for `direction`, named `name`.
    pub fn load(runtime: &Runtime, name: &str, decl: &ConverterDecl, direction: Direction) -> Result<Self, DeclError> {
        let spec = spec(decl, direction)?;
        Ok(match direction {
            Direction::Uplink => AnyConverter::Uplink(runtime.uplink(name, spec)?),
            Direction::Downlink => AnyConverter::Downlink(runtime.downlink(name, spec)?),
        })
    }

    pub fn info(&self) -> ConverterInfo {
        match self {
            AnyConverter::Uplink(c) => c.info(),
            AnyConverter::Downlink(c) => c.info(),
        }
    }

    /// The component and config serving now.
    pub fn spec(&self) -> ConverterSpec {
        match self {
            AnyConverter::Uplink(c) => c.spec(),
            AnyConverter::Downlink(c) => c.spec(),
        }
    }

    /// Swap in a new version (refused, and the old one kept, if it fails).
    pub fn replace(&self, spec: ConverterSpec) -> Result<(), LoadError> {
        match self {
            AnyConverter::Uplink(c) => c.replace(spec),
            AnyConverter::Downlink(c) => c.replace(spec),
        }
    }

    /// The file it was loaded from, if any.
    pub fn file(&self) -> Option<PathBuf> {
        match self.spec().component {
            ComponentSource::File(path) => Some(path),
            ComponentSource::Builtin { .. } | ComponentSource::Bytes { .. } => None,
        }
    }
}

/// A converter the gateway runs, and where it is configured.
#[derive(Clone)]
pub struct Registered {
    /// Unique in the gateway: `<connector>/<label>` (`Devices/json`), a
    /// number added when a connector has two alike (`Devices/json (2)`).
    pub name: String,
    pub connector: String,
    /// Where it is configured: `connectors[0].configuration.mapping[1].converter`.
    pub path: String,
    /// The `.wasm` file its configuration names, if any (watched for a new
    /// version, whatever version serves now).
    pub file: Option<PathBuf>,
    pub converter: AnyConverter,
}

/// Every converter the gateway runs, by name. Clones share one list: a
/// connector restarted with a new configuration replaces its converters
/// here, and the file watcher, uploads and status see the new ones.
#[derive(Clone, Default)]
pub struct Registry(Arc<RwLock<Vec<Registered>>>);

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Registered>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Registered>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A unique name for a converter `label` of `connector`.
    pub fn name_for(&self, connector: &str, label: &str) -> String {
        let base = format!("{connector}/{label}");
        let mut name = base.clone();
        let mut n = 1;
        while self.get(&name).is_some() {
            n += 1;
            name = format!("{base} ({n})");
        }
        name
    }

    pub fn add(&self, r: Registered) {
        self.write().push(r);
    }

    pub fn get(&self, name: &str) -> Option<Registered> {
        self.read().iter().find(|r| r.name == name).cloned()
    }

    /// Every converter now, in the order they were added.
    pub fn snapshot(&self) -> Vec<Registered> {
        self.read().clone()
    }

    /// `connector`'s converters are `converters` from now on.
    pub fn replace_connector(&self, connector: &str, converters: Vec<Registered>) {
        let mut all = self.write();
        all.retain(|r| r.connector != connector);
        all.extend(converters);
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

/// Where compiled converters are cached: `$TBGW_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/tbgw/components`, else `~/.cache/tbgw/components`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TBGW_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tbgw").join("components"))
}

/// The converter runtime with the compile cache in `cache_dir`.
pub fn runtime(cache_dir: Option<PathBuf>) -> Result<Runtime, RuntimeError> {
    Runtime::new(RuntimeConfig { cache_dir, ..RuntimeConfig::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_paths_and_unknown_names() {
        assert!(matches!(resolve("json", Direction::Uplink, None), Ok(ComponentSource::Builtin { name: "json", .. })));
        assert!(matches!(resolve("json", Direction::Downlink, None), Ok(ComponentSource::Builtin { .. })));
        match resolve("conv/x.wasm", Direction::Uplink, Some(Path::new("/etc/tbgw"))) {
            Ok(ComponentSource::File(p)) => assert_eq!(p, Path::new("/etc/tbgw/conv/x.wasm")),
            other => panic!("{other:?}"),
        }
        let err = resolve("jsn", Direction::Uplink, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown converter `jsn`: the built-in uplink converters are `json`, `modbus`, `can`, `opcua`, `ble`; \
             for your own converter give the path of its .wasm file"
        );
    }
}

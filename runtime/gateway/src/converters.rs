//! Naming converters, as configs and the command line do: a built-in name
//! (`json`) or the path of a `.wasm` component; and the converter runtime
//! set up for this machine (its compile cache directory).

use std::path::{Path, PathBuf};
use tbgw_core::Direction;
use tbgw_wasm::{ComponentSource, Runtime, RuntimeConfig, RuntimeError};

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
            "unknown converter `jsn`: the built-in uplink converters are `json`, `modbus`; \
             for your own converter give the path of its .wasm file"
        );
    }
}

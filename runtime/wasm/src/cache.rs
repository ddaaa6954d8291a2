//! The on-disk cache of compiled components, so that a restart does not
//! recompile (compiling a converter takes 0.1-1 s; loading it from here takes
//! about a millisecond).
//!
//! Layout: one file per (component, engine) pair,
//! `<dir>/<sha256 of the .wasm>-<engine key>.cwasm`, where the engine key
//! hashes the wasmtime version and every engine setting that changes
//! generated code (`Engine::precompile_compatibility_hash`). Each file starts
//! with the SHA-256 of the rest, checked before the artifact is loaded, so a
//! truncated or corrupted file is recompiled rather than trusted. Files are
//! written to a temporary name and renamed into place, so readers never see
//! half a file.
//!
//! Loading a compiled artifact runs native code that wasmtime generated: the
//! directory must be writable by tbgw only (it is created 0700).

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use tbgw_core::hex;
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct Cache {
    dir: PathBuf,
    engine_key: String,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Compiled now (and written to the cache when there is one).
    Compiled = 0,
    /// Loaded from the on-disk cache.
    DiskCache,
    /// Already loaded in this process for another converter.
    Memory,
}

impl Cache {
    pub(crate) fn open(dir: &Path, engine: &Engine) -> std::io::Result<Cache> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Cache { dir: dir.to_owned(), engine_key: engine_key(engine) })
    }

    fn path(&self, content_hash: &str) -> PathBuf {
        self.dir.join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// The cached compilation of the component whose SHA-256 is
    /// `content_hash`, if there is a sound one.
    pub(crate) fn load(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let path = self.path(content_hash);
        let bytes = std::fs::read(&path).ok()?;
        let (digest, body) = (bytes.get(..32)?, bytes.get(32..)?);
        if Sha256::digest(body).as_slice() != digest {
            tracing::warn!(path = %path.display(), "compiled component cache entry is corrupt; recompiling");
            return None;
        }
        // SAFETY: the body is wasmtime's own output for this engine
        // configuration (the file name carries the engine key, the checksum
        // proves it is what tbgw wrote), in a directory only tbgw writes.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot load compiled component ({e}); recompiling");
                None
            }
        }
    }

    /// Store a compilation; failures are logged, not fatal: the cache only
    /// saves time.
    pub(crate) fn store(&self, content_hash: &str, component: &Component) {
        let result = component.serialize().map_err(|e| e.to_string()).and_then(|body| {
            let path = self.path(content_hash);
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&Sha256::digest(&body))?;
                f.write_all(&body)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                format!("{}: {e}", path.display())
            })
        });
        if let Err(e) = result {
            tracing::warn!("cannot cache the compiled component: {e}");
        }
    }
}

/// The SHA-256 of `bytes`, in hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A stable key for the engine's code-generation settings and version.
fn engine_key(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = Sha(Sha256::new());
    // The layout of our cache files; wasmtime's own version is in the hash below.
    h.write(b"tbgw-cache-v1");
    engine.precompile_compatibility_hash().hash(&mut h);
    hex(&h.0.finalize()[..8])
}

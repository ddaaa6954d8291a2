//! The on-disk cache of compiled components, so that a restart does not
//! recompile (compiling a converter takes 0.1-1 s, an interpreter's 8-20 s;
//! loading it from here takes milliseconds).
//!
//! Layout: two files per (component, engine) pair,
//! `<dir>/<sha256 of the .wasm>-<engine key>.cwasm`, wasmtime's artifact as
//! it wrote it, and `.sha256` beside it, the artifact's SHA-256, checked
//! before the artifact is loaded, so a truncated or corrupted file is
//! recompiled rather than trusted. The engine key hashes the wasmtime
//! version, every engine setting that changes generated code
//! (`Engine::precompile_compatibility_hash`) and this layout. Files are
//! written to a temporary name and renamed into place, so readers never see
//! half a file, and a file is never rewritten in place.
//!
//! The artifact is mapped, not read: its code and its memory images are then
//! the file's pages, shared with the page cache and only resident where they
//! are used, instead of an anonymous copy of the whole artifact (37 MB for a
//! Python or JavaScript converter, whose interpreter's code mostly never
//! runs). The checksum is computed by streaming the file, which does not
//! make it resident in the process either.
//!
//! Loading a compiled artifact runs native code that wasmtime generated: the
//! directory must be writable by tbgw only (it is created 0700).

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
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
        let digest = std::fs::read(path.with_extension("sha256")).ok()?;
        match file_digest(&path) {
            Ok(actual) if actual.as_slice() == digest.as_slice() => {}
            Ok(_) => {
                tracing::warn!(path = %path.display(), "compiled component cache entry is corrupt; recompiling");
                return None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read the cached component ({e}); recompiling");
                return None;
            }
        }
        // SAFETY: the file is wasmtime's own output for this engine
        // configuration (the file name carries the engine key, the checksum
        // proves it is what tbgw wrote), in a directory only tbgw writes,
        // and never modified in place (new versions are renamed over it), so
        // the mapping stays what was checked.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot load compiled component ({e}); recompiling");
                None
            }
        }
    }

    /// Store a compilation; failures are logged, not fatal: the cache only
    /// saves time. True when stored.
    pub(crate) fn store(&self, content_hash: &str, component: &Component) -> bool {
        let result = component.serialize().map_err(|e| e.to_string()).and_then(|body| {
            let path = self.path(content_hash);
            // The artifact first: a reader between the two renames finds a
            // digest that does not match and recompiles.
            write_atomically(&path, &body)
                .and_then(|()| write_atomically(&path.with_extension("sha256"), &Sha256::digest(&body)))
                .map_err(|e| format!("{}: {e}", path.display()))
        });
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("cannot cache the compiled component: {e}");
                false
            }
        }
    }
}

/// Write `bytes` to `path` through a temporary file, synced, renamed into
/// place: a reader finds the old content or the new, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The SHA-256 of a file, read in blocks.
fn file_digest(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut block)? {
            0 => return Ok(hasher.finalize().into()),
            n => hasher.update(&block[..n]),
        }
    }
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
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
    h.write(b"tbgw-cache-v2");
    engine.precompile_compatibility_hash().hash(&mut h);
    hex(&h.0.finalize()[..8])
}

//! TLS client settings for tbgw's MQTT connections (to ThingsBoard, to
//! source brokers): rustls with the ring provider (one crypto stack for the
//! whole gateway), the given CA or the system's roots, and an optional client
//! certificate for X.509 authentication.

pub use rustls;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS files: the CA to verify the server with (the system's roots when
/// absent), and the client certificate and key for X.509 authentication.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct TlsError {
    what: &'static str,
    path: String,
    reason: String,
}

fn err(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError { what, path: path.display().to_string(), reason: reason.to_string() }
}

/// Build the rustls client configuration.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca_cert {
        Some(path) => {
            for cert in certs(path, "CA certificate")? {
                roots.add(cert).map_err(|e| err("CA certificate", path, e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError {
                    what: "system CA certificates",
                    path: String::new(),
                    reason: "none found: name the CA certificate file".into(),
                });
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError { what: "TLS", path: String::new(), reason: e.to_string() })?
        .with_root_certificates(roots);
    match (&files.client_cert, &files.private_key) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert, "client certificate")?;
            let key = private_key(key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| err("client certificate", cert, e))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), None) => Err(err("client certificate", cert, "given without its private key")),
        (None, Some(key)) => Err(err("private key", key, "given without its certificate")),
    }
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| err(what, path, e))?;
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<_, _>>().map_err(|e| err(what, path, e))?;
    if certs.is_empty() {
        return Err(err(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| err("private key", path, e))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| err("private key", path, e))?
        .ok_or_else(|| err("private key", path, "no PEM private key in it"))
}

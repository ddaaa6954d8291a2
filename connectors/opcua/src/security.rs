//! Message security: the client's certificate, the trust list of server
//! certificates, and what a refused connection means to the user.
//!
//! The trust list is async-opcua's certificate store in the connector's
//! `pkiDir`: a server certificate is trusted when it is in `trusted/`
//! (named as async-opcua names it, from its common name and thumbprint);
//! an unknown one is put in `rejected/` and the connection refused
//! (`BadCertificateUntrusted`), until a user moves it to `trusted/`.
//! Before each connection the configured `caCert` is copied into
//! `trusted/`; with `trustOnFirstUse` the first server certificate seen is
//! trusted and kept there, and from then on only it (trust on first use,
//! not "trust any": a store that already trusts a certificate does not
//! take a new one).
//!
//! The client's application URI is the one its certificate names (the
//! first URI of its subjectAltName): a server refuses a client whose URI
//! and certificate disagree, a common trap in the Python gateway (`uri`
//! set by hand, thingsboard-gateway #1677, #746).
//!
//! A session without message security needs no certificate, but
//! async-opcua reads one for every channel and logs errors ("crypto won't
//! work") where there is none: [`unsecured_keypair`] gives it a
//! throwaway one, so that a correct configuration logs no error.

use crate::config::Channel;
use opcua::crypto::{CertificateStore, X509Data};
use opcua::types::StatusCode;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use x509_cert::der::Decode;

/// What a channel needs from the store before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prepared {
    /// The application URI of the client's certificate, if it names one.
    pub application_uri: Option<String>,
    /// Whether the first server certificate seen is to be trusted.
    pub trust_unknown: bool,
}

/// A certificate and key for sessions without message security (used for
/// nothing but async-opcua's reading them): made once in
/// `<temp>/tbgw-opcua-pki/unsecured/` and kept there for later runs. Made
/// in a directory of this process's own and renamed into place, so that
/// processes starting together never read a half-written pair. `None` if
/// it cannot be made (async-opcua then logs its errors, and the session
/// works all the same).
pub(crate) fn unsecured_keypair() -> Option<(PathBuf, PathBuf)> {
    static PAIR: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    PAIR.get_or_init(|| {
        let base = std::env::temp_dir().join("tbgw-opcua-pki");
        let files = |dir: &Path| (dir.join("cert.der"), dir.join("key.pem"));
        let dir = base.join("unsecured");
        let (cert, key) = files(&dir);
        if cert.is_file() && key.is_file() {
            return Some((cert, key));
        }
        let mine = base.join(format!("unsecured-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&mine);
        std::fs::create_dir_all(&mine).ok()?;
        let (my_cert, my_key) = files(&mine);
        let mut data = X509Data {
            key_size: 2048,
            common_name: "tbgw (no message security)".into(),
            organization: "tbgw".into(),
            organizational_unit: "tbgw".into(),
            country: "DE".into(),
            state: "Berlin".into(),
            alt_host_names: Default::default(),
            certificate_duration_days: 3650,
        };
        data.alt_host_names.add_uri("urn:tbgw:opcua");
        let made = CertificateStore::create_certificate_and_key(&data, true, &my_cert, &my_key);
        // Another process may have put its pair in place meanwhile: then
        // the rename fails, and theirs is as good.
        let placed = made.is_ok() && std::fs::rename(&mine, &dir).is_ok();
        if !placed {
            let _ = std::fs::remove_dir_all(&mine);
        }
        (cert.is_file() && key.is_file()).then_some((cert, key))
    })
    .clone()
}

/// Check the client's certificate and key, put `caCert` into the trust
/// list, and decide on trust on first use.
pub(crate) fn prepare(c: &Channel) -> Result<Prepared, String> {
    let cert = CertificateStore::read_cert(&c.certificate)
        .map_err(|e| format!("identity.cert {}: {e}", c.certificate.display()))?;
    CertificateStore::read_pkey(&c.private_key)
        .map_err(|e| format!("identity.privateKey {}: {e}", c.private_key.display()))?;
    let der = cert.to_der().map_err(|e| format!("identity.cert {}: {e}", c.certificate.display()))?;
    let application_uri = uri_of(&der);
    let trusted = c.pki_dir.join("trusted");
    for dir in [trusted.clone(), c.pki_dir.join("rejected"), c.pki_dir.join("own"), c.pki_dir.join("private")] {
        std::fs::create_dir_all(&dir).map_err(|e| format!("server.pkiDir: cannot create {}: {e}", dir.display()))?;
    }
    if let Some(path) = &c.server_certificate {
        let server =
            CertificateStore::read_cert(path).map_err(|e| format!("identity.caCert {}: {e}", path.display()))?;
        let der = server.to_der().map_err(|e| format!("identity.caCert {}: {e}", path.display()))?;
        let target = trusted.join(CertificateStore::cert_file_name(&server));
        if std::fs::read(&target).ok().as_deref() != Some(der.as_slice()) {
            std::fs::write(&target, &der)
                .map_err(|e| format!("trusting identity.caCert: {}: {e}", target.display()))?;
        }
    }
    let trust_unknown = c.trust_on_first_use && !holds_certificates(&trusted);
    Ok(Prepared { application_uri, trust_unknown })
}

fn holds_certificates(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == "der")))
        .unwrap_or(false)
}

/// The first URI in a certificate's subjectAltName.
fn uri_of(der: &[u8]) -> Option<String> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let (_, san) = cert.tbs_certificate.get::<SubjectAltName>().ok()??;
    san.0.iter().find_map(|name| match name {
        GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
        _ => None,
    })
}

/// What a refused connection means, and what to do, for the log.
pub(crate) fn hint(status: StatusCode, channel: Option<&Channel>) -> String {
    let pki = channel.map(|c| c.pki_dir.display().to_string()).unwrap_or_else(|| "the pkiDir".into());
    // async-opcua refuses a certificate it has put in `rejected/` before
    // with a status of its own.
    let rejected_before = status == StatusCode::BadSecurityChecksFailed
        && channel.is_some_and(|c| holds_certificates(&c.pki_dir.join("rejected")));
    let status = if rejected_before { StatusCode::BadCertificateUntrusted } else { status };
    match status {
        StatusCode::BadIdentityTokenRejected
        | StatusCode::BadIdentityTokenInvalid
        | StatusCode::BadUserAccessDenied => ": the server refused the login (server.identity)".into(),
        StatusCode::BadCertificateUntrusted => format!(
            ": the server's certificate is not trusted; it is in {pki}/rejected: move it to {pki}/trusted, \
             name it in identity.caCert, or set identity.trustOnFirstUse"
        ),
        StatusCode::BadSecurityChecksFailed
        | StatusCode::BadCertificateInvalid
        | StatusCode::BadCertificateUriInvalid
        | StatusCode::BadCertificateHostNameInvalid
        | StatusCode::BadCertificateTimeInvalid
        | StatusCode::BadCertificateUseNotAllowed => {
            ": a certificate was refused (the server's by tbgw, or tbgw's identity.cert by the server, \
             which may not trust it yet)"
                .into()
        }
        StatusCode::BadNoValidCertificates => {
            ": the server's certificate is not the one this session began with (a server replaced, or its \
             certificate renewed): not trusted"
                .into()
        }
        StatusCode::BadSecurityPolicyRejected | StatusCode::BadSecurityModeRejected => {
            ": the server has no endpoint with this security (server.security, identity.mode)".into()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::crypto::SecurityPolicy;
    use opcua::types::MessageSecurityMode;
    use tbgw_test_support::opcua::client_certificate as certificate;

    #[test]
    fn the_uri_comes_from_the_certificate_and_trust_on_first_use_only_while_none_is_trusted() {
        let dir = std::env::temp_dir().join(format!("tbgw-opcua-security-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = certificate(&dir, "client", "urn:example:tbgw:line-3");
        let (server, _) = certificate(&dir, "server", "urn:example:plc");
        let mut c = Channel {
            policy: SecurityPolicy::Basic256Sha256,
            mode: MessageSecurityMode::SignAndEncrypt,
            certificate: cert,
            private_key: key.clone(),
            server_certificate: None,
            trust_on_first_use: true,
            pki_dir: dir.join("pki"),
        };
        let p = prepare(&c).expect("prepared");
        assert_eq!(p, Prepared { application_uri: Some("urn:example:tbgw:line-3".into()), trust_unknown: true });
        // caCert goes into the trust list: then nothing else is trusted.
        c.server_certificate = Some(server);
        assert!(!prepare(&c).expect("prepared").trust_unknown);
        assert!(holds_certificates(&dir.join("pki/trusted")));
        // A key that is not one is named.
        c.private_key = c.certificate.clone();
        assert!(prepare(&c).unwrap_err().starts_with("identity.privateKey"), "the key's field");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

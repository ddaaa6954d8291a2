//! How the client reaches ThingsBoard: address, credentials, TLS, and the
//! delivery knobs. Built by the gateway from its config file; secrets never
//! print.

use crate::limits::RateLimits;
use std::fmt;
use std::time::Duration;
pub use tbgw_tls::TlsFiles;

/// Text that must not appear in logs (a token, a password).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// How the gateway device authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// The device's access token, sent as the MQTT user name.
    AccessToken(Secret),
    /// MQTT basic credentials (ThingsBoard's "MQTT Basic").
    Basic { username: Option<String>, password: Option<Secret> },
    /// None beyond the TLS client certificate (X.509).
    None,
}

/// Everything the client needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub credentials: Credentials,
    pub tls: Option<TlsFiles>,
    pub keep_alive: Duration,
    /// The largest publish; ThingsBoard's session limits can lower it.
    pub max_payload_bytes: usize,
    /// Publishes awaiting their PUBACK at once; the session limits can lower it.
    pub max_inflight: usize,
    /// Events read from the store per chunk.
    pub read_batch: usize,
    /// First and longest wait between reconnection attempts.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long to wait for `getSessionLimits` before going on with the defaults.
    pub session_limits_timeout: Duration,
    /// How long a shutdown waits for publishes in flight.
    pub shutdown_grace: Duration,
    /// Rate limits of the child devices' publishes and of the gateway's
    /// own, until ThingsBoard announces its own (which then apply).
    pub gateway_limits: RateLimits,
    pub own_limits: RateLimits,
}

impl ClientConfig {
    /// A config for `host:port` with the defaults.
    pub fn new(host: impl Into<String>, port: u16, credentials: Credentials) -> Self {
        ClientConfig {
            host: host.into(),
            port,
            client_id: "tbgw".into(),
            credentials,
            tls: None,
            keep_alive: Duration::from_secs(30),
            max_payload_bytes: 64 * 1024,
            max_inflight: 100,
            read_batch: 2000,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            session_limits_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            gateway_limits: RateLimits::default(),
            own_limits: RateLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let c = ClientConfig::new("h", 1883, Credentials::AccessToken(Secret::new("A1_TEST_TOKEN")));
        let shown = format!("{c:?}");
        assert!(!shown.contains("A1_TEST_TOKEN"), "{shown}");
        assert!(shown.contains("***"));
    }
}

//! `tbgw demo`: the real gateway at work with nothing else installed.
//!
//! ```text
//! device simulator ──▶ embedded broker ──▶ tbgw (MQTT connector, json converter,
//!                        (loopback)  ◀──    fjall store, ThingsBoard client)
//!                           │
//!                           └──▶ ThingsBoard view: what ThingsBoard would receive
//! ```
//!
//! One [`broker::Broker`] on loopback plays both the devices' broker and
//! ThingsBoard's MQTT endpoint. The gateway runs with the example
//! configuration of `config/` (`tb_gateway.yaml` and `mqtt.json`, built into
//! the binary), pointed at that broker; [`devices`] publishes JSON sensor
//! data the way `config/mqtt.json` maps it, and [`view`] subscribes to the
//! gateway API topics and tallies what arrives.

pub mod broker;
pub mod devices;
pub mod view;

use crate::config::{self, GatewayConfig};
use crate::converters;
use crate::service::{self, ServiceError};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tbgw_core::config::Diagnostics;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The example gateway configuration the demo runs.
pub const GATEWAY_CONFIG: &str = include_str!("../../../../config/tb_gateway.yaml");
/// The example MQTT connector configuration the demo runs.
pub const MQTT_CONFIG: &str = include_str!("../../../../config/mqtt.json");

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated devices.
    pub devices: usize,
    /// Each device publishes this often.
    pub interval: Duration,
    /// Where the event store lives.
    pub data_dir: PathBuf,
    /// Where the broker listens (port 0: any free port).
    pub listen: SocketAddr,
    /// How often the gateway reports its statistics.
    pub stats_period: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            devices: 20,
            interval: Duration::from_millis(500),
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            stats_period: Duration::from_secs(5),
        }
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the embedded broker on {addr}: {source}")]
    Broker { addr: SocketAddr, source: std::io::Error },
    #[error("the built-in example configuration does not load: {0}")]
    Config(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("the gateway task failed: {0}")]
    Task(String),
}

/// The example configuration, pointed at the broker on `port`, its store
/// in `data_dir`.
pub fn gateway_config(port: u16, data_dir: &Path, stats_period: Duration) -> Result<GatewayConfig, Diagnostics> {
    let mut d = Diagnostics::default();
    let (mut gw, mut mqtt) = match (config::parse_text(GATEWAY_CONFIG, true), config::parse_text(MQTT_CONFIG, false)) {
        (Ok(gw), Ok(mqtt)) => (gw, mqtt),
        (Err(e), _) | (_, Err(e)) => {
            d.error("", e);
            return Err(d);
        }
    };
    // The embedded broker speaks MQTT 3.1.1 and keeps no sessions.
    if let Some(broker) = mqtt.get_mut("broker").and_then(Value::as_object_mut) {
        broker.insert("host".into(), json!("127.0.0.1"));
        broker.insert("port".into(), json!(port));
        broker.insert("version".into(), json!(4));
        broker.remove("cleanStart");
        broker.remove("sessionExpiryInterval");
    }
    gw["thingsboard"]["host"] = json!("127.0.0.1");
    gw["thingsboard"]["port"] = json!(port);
    gw["thingsboard"]["security"] = json!({"type": "accessToken", "accessToken": "demo"});
    gw["thingsboard"]["statistics"]["statsSendPeriodInSeconds"] = json!(stats_period.as_secs().max(1));
    gw["storage"]["data_folder_path"] = json!(data_dir.display().to_string());
    if let Some(c) = gw["connectors"].get_mut(0) {
        c["configuration"] = mqtt;
    }
    let file = Path::new("config/tb_gateway.yaml (built in)");
    let mut config = config::from_document(&gw, file, Path::new("config"), &mut d);
    if let Some(c) = &mut config {
        // Compiled converters outlive the demo's data folder.
        c.cache_dir = c.cache_dir.take().or_else(converters::default_cache_dir);
    }
    match config {
        Some(c) if d.is_ok() => Ok(c),
        _ => Err(d),
    }
}

/// How a demo ended.
#[derive(Debug, Clone)]
pub struct DemoEnd {
    /// Messages the devices published (acknowledged by the broker).
    pub published: u64,
    /// What ThingsBoard received.
    pub seen: view::Seen,
}

/// The running demo.
pub struct Demo {
    pub broker: broker::Broker,
    pub view: view::View,
    pub devices: devices::Devices,
    gateway: JoinHandle<Result<service::Stopped, ServiceError>>,
    gateway_stop: CancellationToken,
}

impl Demo {
    /// Start the broker, the ThingsBoard view, the gateway and the devices.
    pub async fn start(options: &DemoOptions) -> Result<Demo, DemoError> {
        let broker = broker::Broker::start(options.listen)
            .await
            .map_err(|source| DemoError::Broker { addr: options.listen, source })?;
        let port = broker.addr().port();
        let config = gateway_config(port, &options.data_dir, options.stats_period)
            .map_err(|d| DemoError::Config(d.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;
        let view = view::View::start(port).await;
        let gateway_stop = CancellationToken::new();
        let gateway = tokio::spawn(service::run(config, gateway_stop.clone()));
        // Devices start once the gateway listens: the broker keeps nothing
        // for a subscriber that is not there yet.
        let first = format!("sensor/{}/data", devices::device_name(0));
        while !broker.has_subscriber(&first) {
            if gateway.is_finished() {
                return match gateway.await {
                    Ok(Err(e)) => Err(e.into()),
                    Ok(Ok(_)) => Err(DemoError::Task("the gateway stopped before subscribing".into())),
                    Err(e) => Err(DemoError::Task(e.to_string())),
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let devices = devices::Devices::start(port, options.devices, options.interval);
        Ok(Demo { broker, view, devices, gateway, gateway_stop })
    }

    /// Stop the devices, give the gateway `settle` to deliver what they
    /// sent, stop it in order, and say what was published and received.
    pub async fn stop(self, settle: Duration) -> Result<DemoEnd, DemoError> {
        let published = self.devices.stop().await;
        let deadline = tokio::time::Instant::now() + settle;
        while self.view.snapshot().readings < published && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.gateway_stop.cancel();
        match self.gateway.await {
            Ok(r) => {
                r?;
            }
            Err(e) => return Err(DemoError::Task(e.to_string())),
        }
        Ok(DemoEnd { published, seen: self.view.snapshot() })
    }

    /// The gateway ended on its own (it failed to start, say).
    pub fn gateway_finished(&self) -> bool {
        self.gateway.is_finished()
    }
}

//! ThingsBoard's MQTT gateway API, as tbgw speaks it.
//!
//! - [`client`]: the delivery client: events from the store to ThingsBoard,
//!   removed only after ThingsBoard's PUBACK; sessions, reconnection, session
//!   limits.
//! - [`pack`]: events packed into `v1/gateway/telemetry` and
//!   `v1/gateway/attributes` publishes under the payload limit.
//! - [`quickack`]: the connection's ACKs sent at once, so that a broker's
//!   Nagle does not hold ThingsBoard's next request behind them.
//! - [`codec`]: the requests ThingsBoard sends for child devices.
//! - [`config`], [`limits`]: connection settings (TLS comes from
//!   `tbgw-tls`), and ThingsBoard's session and rate limits.

pub mod client;
pub mod codec;
pub mod config;
pub mod limits;
pub mod pack;
pub mod quickack;

pub use client::{
    ClientError, ClientHandle, ClientStats, ClientStatsSnapshot, Command, CommandSender, Incoming, SendError, spawn,
};
pub use config::{ClientConfig, Credentials, Secret, TlsFiles};

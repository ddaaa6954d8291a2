//! The CAN connector's configuration: the ThingsBoard IoT Gateway's
//! `can.json`, so that its users' files load unchanged.
//!
//! ```json
//! {"interface": "socketcan", "channel": "can0", "backend": {"fd": true},
//!  "reconnect": true, "reconnectPeriod": 5, "reconnectCount": 10,
//!  "devices": [{"name": "Car", "timeseries": [...], "attributeUpdates": [...], "serverSideRpc": [...]}]}
//! ```
//!
//! The bus: `interface` is `socketcan` (the kernel's CAN sockets on
//! `channel`), or tbgw's `socketcand` (a socketcand server at `host`:`port`
//! serving `channel`, the remote-interface protocol of linux-can/socketcand);
//! `backend.fd` opens SocketCAN for CAN FD frames too. The Python gateway
//! hands the other `backend` keys to python-can; they are accepted here with
//! a notice. `reconnect` (default true), `reconnectPeriod` (seconds, default
//! 30) and `reconnectCount` (default: forever) say what happens when the bus
//! is lost (the socket fails, the controller goes bus-off, the socketcand
//! server goes away).
//!
//! The devices' items are [`tbgw_can_items`]'s; their values, expressions
//! and writes the `can` converters' (configured with the whole document).
//! A device's `converters` (`{"uplink": ..., "downlink": ...}`, in the
//! Python gateway the names of Python classes) may name `.wasm` components
//! or converter entries instead; such a converter is configured with the
//! device's object.

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tbgw_can_items::Schema;
use tbgw_core::config::{Diagnostics, Obj};
use tbgw_core::report::{self, ReportPolicy, Strategy};
use tbgw_core::setup::{
    self, ComponentRef, ConverterDecl, DeviceEntry, DownlinkDecl, LimitsDecl, PerDevice, RouteDecl,
};

/// socketcand's registered port.
pub const SOCKETCAND_PORT: u16 = 29536;

/// Where the bus is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interface {
    /// The kernel's CAN sockets on an interface (`can0`).
    SocketCan { channel: String, fd: bool },
    /// A socketcand server serving `channel`.
    Socketcand { host: String, port: u16, channel: String },
}

impl std::fmt::Display for Interface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interface::SocketCan { channel, .. } => write!(f, "SocketCAN {channel}"),
            Interface::Socketcand { host, port, channel } => write!(f, "socketcand {channel} at {host}:{port}"),
        }
    }
}

impl Interface {
    /// The bus's name, as the frames' `interface` metadata has it.
    pub fn channel(&self) -> &str {
        match self {
            Interface::SocketCan { channel, .. } | Interface::Socketcand { channel, .. } => channel,
        }
    }
}

/// What to do when the bus is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    pub enabled: bool,
    pub period: Duration,
    /// Attempts after a loss before the connector gives up; `None`: forever.
    pub count: Option<u64>,
}

/// An entry's poll, as the connector sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// The entry's key (for logs).
    pub key: String,
    pub frame: tbgw_core::CanFrame,
    pub data: Vec<u8>,
    /// `None`: once per connection.
    pub period: Option<Duration>,
}

/// The whole connector configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CanConfig {
    pub interface: Interface,
    pub reconnect: Reconnect,
    /// The devices' names, in file order, and their types.
    pub devices: Vec<String>,
    pub device_types: Vec<Option<String>>,
    /// The routing of frames to items (and so to devices).
    pub routes: tbgw_can_items::Routes,
    /// The device of each item.
    pub item_devices: Vec<usize>,
    pub polls: Vec<Poll>,
    /// Uplink routes: the built-in `can` converter (if a device uses it),
    /// then each device's own.
    pub(crate) route_decls: Vec<RouteDecl>,
    /// The route (an index into `route_decls`) of each device.
    pub(crate) device_routes: Vec<usize>,
    pub(crate) downlinks: Vec<DownlinkDecl>,
}

/// Read `can.json` (custom converters' paths relative to `base_dir`);
/// problems go to `d` by path.
pub fn parse(doc: &Value, base_dir: &Path, d: &mut Diagnostics) -> Option<CanConfig> {
    let mut root = Obj::new(d, "", doc)?;
    let interface = interface(d, &mut root);
    let reconnect = Reconnect {
        enabled: root.bool(d, "reconnect").unwrap_or(true),
        period: root
            .get("reconnectPeriod")
            .and_then(|v| seconds(d, "reconnectPeriod", v))
            .unwrap_or(Duration::from_secs(30)),
        count: root.uint(d, "reconnectCount", 0..=u64::from(u32::MAX)),
    };
    let route_report = root.get("reportStrategy").and_then(|v| report::parse(d, "reportStrategy", v));
    root.allow(&["devices"]);
    root.allow(&tbgw_core::config::GATEWAY_KEYS);
    root.allow(&["name", "id"]);
    root.finish(d);
    let schema = match tbgw_can_items::read(doc) {
        Ok(s) => s,
        Err(e) => {
            d.error(e.field.unwrap_or_default(), e.message);
            return None;
        }
    };
    let mut report = ReportPolicy { route: route_report, ..Default::default() };
    device_reports(d, &schema, &mut report);
    let polls = polls(&schema);
    if matches!(interface, Some(Interface::Socketcand { .. })) {
        for item in schema.items.iter().filter(|i| i.polling.is_some() && i.frame.fd) {
            d.error(format!("{}.isFd", item.path), "a CAN FD poll; socketcand carries classic CAN frames only");
        }
    }
    let (route_decls, device_routes, downlinks) = converters(d, doc, &schema, base_dir, &report);
    let interface = interface?;
    Some(CanConfig {
        interface,
        reconnect,
        devices: schema.devices.iter().map(|dev| dev.name.to_owned()).collect(),
        device_types: schema.devices.iter().map(|dev| dev.device_type.map(str::to_owned)).collect(),
        item_devices: schema.items.iter().map(|i| i.device).collect(),
        routes: schema.routes,
        polls,
        route_decls,
        device_routes,
        downlinks,
    })
}

fn seconds(d: &mut Diagnostics, path: &str, v: &Value) -> Option<Duration> {
    match tbgw_can_items::seconds_ms(path, v) {
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(e) => {
            d.error(path, e.message);
            None
        }
    }
}

fn interface(d: &mut Diagnostics, root: &mut Obj) -> Option<Interface> {
    let kind = root.string(d, "interface").unwrap_or("socketcan");
    let channel = root.string(d, "channel").unwrap_or("vcan0").to_owned();
    let mut fd = false;
    if let Some(mut backend) = root.object(d, "backend") {
        fd = backend.bool(d, "fd").unwrap_or(false);
        let others: Vec<String> = match root.get("backend") {
            Some(Value::Object(o)) => o.keys().filter(|k| *k != "fd").cloned().collect(),
            _ => Vec::new(),
        };
        for k in others {
            d.notice(format!("backend.{k}"), "ignored: a python-can option; tbgw reads `fd`");
        }
    }
    let host = root.string(d, "host");
    let port = root.uint(d, "port", 1..=65535);
    match kind {
        "socketcan" => {
            if host.is_some() {
                d.notice("host", "ignored: SocketCAN is a local interface (a remote bus is `interface: socketcand`)");
            }
            Some(Interface::SocketCan { channel, fd })
        }
        "socketcand" => {
            let Some(host) = host else {
                d.error("host", "required: the socketcand server (`interface: socketcand`)");
                return None;
            };
            if fd {
                d.error("backend.fd", "socketcand carries classic CAN frames only");
            }
            Some(Interface::Socketcand {
                host: host.to_owned(),
                port: port.map_or(SOCKETCAND_PORT, |p| p as u16),
                channel,
            })
        }
        other => {
            d.error(
                "interface",
                format!("`{other}` is not an interface tbgw has; expected socketcan, or socketcand for a remote bus"),
            );
            None
        }
    }
}

/// Report strategies: a device's `reportStrategy` (or
/// `sendDataOnlyOnChange: true`, which the Python gateway reads and never
/// applies), and its items'.
fn device_reports(d: &mut Diagnostics, schema: &Schema, report: &mut ReportPolicy) {
    for dev in &schema.devices {
        let own = match dev.object.get("reportStrategy") {
            Some(v) => report::parse(d, &format!("{}.reportStrategy", dev.path), v),
            None => (dev.object.get("sendDataOnlyOnChange") == Some(&Value::Bool(true))).then_some(Strategy::OnChange),
        };
        if let Some(own) = own {
            report.devices.insert(dev.name.to_owned(), own);
        }
    }
    for item in &schema.items {
        let Some(v) = item.entry.get("reportStrategy") else { continue };
        if let Some(s) = report::parse(d, &format!("{}.reportStrategy", item.path), v) {
            let device = schema.devices[item.device].name.to_owned();
            report.device_keys.entry(device).or_default().insert(item.key.to_owned(), s);
        }
    }
}

fn polls(schema: &Schema) -> Vec<Poll> {
    schema
        .items
        .iter()
        .filter_map(|item| {
            let p = item.polling.as_ref()?;
            let f = item.frame;
            Some(Poll {
                key: item.key.to_owned(),
                frame: tbgw_core::CanFrame {
                    id: f.id,
                    extended: f.extended,
                    rtr: false,
                    fd: f.fd,
                    brs: f.brs,
                    esi: false,
                },
                data: p.data.clone(),
                period: p.always.then(|| Duration::from_millis(p.period_ms)),
            })
        })
        .collect()
}

fn builtin(doc: &Value) -> ConverterDecl {
    ConverterDecl {
        // The converter names the user's own paths.
        path: String::new(),
        label: "can".into(),
        component: ComponentRef::Builtin("can".into()),
        config: doc.to_string(),
        limits: LimitsDecl::default(),
    }
}

fn converters(d: &mut Diagnostics, doc: &Value, schema: &Schema, base: &Path, report: &ReportPolicy) -> PerDevice {
    let entries: Vec<DeviceEntry> =
        schema.devices.iter().map(|dev| DeviceEntry { path: &dev.path, name: dev.name, object: dev.object }).collect();
    setup::device_converters(d, "can", &builtin(doc), &entries, base, report)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

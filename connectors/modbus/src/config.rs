//! The Modbus connector's configuration: the ThingsBoard IoT Gateway's
//! `modbus.json` (its `master.slaves[]`), so that its users' files load
//! unchanged.
//!
//! ```json
//! {"master": {"slaves": [{
//!   "host": "192.0.2.10", "port": 502, "type": "tcp", "method": "socket", "unitId": 1,
//!   "deviceName": "Meter A", "deviceType": "meter", "pollPeriod": 1000, "timeout": 5,
//!   "byteOrder": "BIG", "wordOrder": "LITTLE",
//!   "connectAttemptTimeMs": 5000, "connectAttemptCount": 5, "waitAfterFailedAttemptsMs": 300000,
//!   "timeseries": [{"tag": "voltage", "type": "32float", "functionCode": 4, "address": 0, "objectsCount": 2}],
//!   "attributeUpdates": [...], "rpc": [...]}]}}
//! ```
//!
//! A slave's tags, orders and device are the `modbus` converter's config
//! (handed to it in a compact form: slaves with the same tags share one
//! profile, which says where it is in the file so that its errors name the
//! user's path); this module reads the connection, and where each tag is
//! with the tag schema ([`tbgw_modbus_tags`]) to plan the reads. Slaves on
//! one serial port or behind one RTU device server share a line
//! ([`SlaveConfig::line`]). tbgw's own keys: `maxGap` (unused objects a
//! read may span to join two tags, default 0: some devices refuse to read
//! addresses they do not have) and `maxRegistersPerRequest` (default 125,
//! the protocol's maximum).
//!
//! Converters, as the Python gateway names them per slave:
//! `uplink_converter` and `downlink_converter`, a `.wasm` component's path
//! (configured with the slave's object, as the Python gateway hands its
//! converter the slave), or a converter entry (`{"type": "modbus" | "custom",
//! "extension", "extensionConfig", "limits"}`). Slaves on the built-in
//! `modbus` converters share one instance of each (one per distinct
//! `limits`), however many there are.

use crate::planner::{self, Read};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tbgw_core::config::{Diagnostics, Obj};
use tbgw_core::report::{self, ReportPolicy, Strategy};
use tbgw_core::setup::{self, ComponentRef, ConverterDecl, Devices, DownlinkDecl, LimitsDecl, RouteDecl};

/// How requests are framed on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Modbus TCP (MBAP header): `method: socket`.
    Tcp,
    /// RTU frames (CRC) over a TCP connection, as serial servers forward
    /// them: `method: rtu`.
    RtuOverTcp,
    /// RTU on a serial port (`type: serial`; `port` is its path).
    Serial(SerialSettings),
    /// Modbus TCP frames in UDP datagrams (`type: udp`, `method: socket`).
    Udp,
    /// RTU frames in UDP datagrams (`type: udp`, `method: rtu`).
    RtuOverUdp,
}

/// A serial line's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub path: String,
    pub baudrate: u32,
    /// `N`, `E` or `O`.
    pub parity: char,
    pub stopbits: u8,
    pub bytesize: u8,
}

/// One slave: where it is and what to read.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaveConfig {
    /// `master.slaves[i]`, for messages.
    pub path: String,
    pub device_name: String,
    pub device_type: Option<String>,
    pub host: String,
    pub port: u16,
    pub framing: Framing,
    pub unit_id: u8,
    pub poll_period: Duration,
    pub timeout: Duration,
    /// Attempts of a read before the connection is considered lost.
    pub retries: u32,
    /// Quiet time before each request to this slave (`delayBetweenRequestsMs`:
    /// devices that need a pause between frames).
    pub delay_between_requests: Duration,
    pub connect_timeout: Duration,
    pub connect_attempts: u32,
    pub wait_after_failed_attempts: Duration,
    /// The planned reads.
    pub reads: Vec<Read>,
    /// `uplink_converter`.
    pub uplink: SlaveConverter,
    /// `downlink_converter`.
    pub downlink: SlaveConverter,
}

/// A slave's converter: the built-in `modbus` one (with its limits), or a
/// custom component.
#[derive(Debug, Clone, PartialEq)]
pub enum SlaveConverter {
    Builtin(LimitsDecl),
    Custom(ConverterDecl),
}

/// The whole connector configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusConfig {
    pub slaves: Vec<SlaveConfig>,
    /// The uplink routes: the built-in `modbus` converter of the slaves on
    /// it (one route per distinct `limits`, its config every such slave in
    /// the compact form), then each custom converter.
    pub(crate) routes: Vec<RouteDecl>,
    /// The route (an index into `routes`) of each slave.
    slave_routes: Vec<usize>,
    /// The downlink converters and their slaves, alike.
    pub(crate) downlinks: Vec<DownlinkDecl>,
    /// Report strategies: the file's `reportStrategy`, each slave's (or its
    /// `sendDataOnlyOnChange`), each tag's.
    pub report: ReportPolicy,
}

impl ModbusConfig {
    /// The route of slave `i` (an index into [`setup::ConnectorSetup::routes`]).
    pub fn route_of(&self, i: usize) -> usize {
        self.slave_routes[i]
    }
}

/// Builds a built-in converter's compact config slave by slave: slaves with
/// the same tags share one profile, so that a field of identical meters
/// costs the converter one tag list, not one each. Built while reading: the
/// slaves' own JSON is not kept (with 100,000 tags it is megabytes).
#[derive(Default)]
struct Compact {
    /// Each distinct profile, with its JSON text as the key.
    profiles: Vec<(String, Value)>,
    slaves: Vec<Value>,
    devices: Vec<String>,
}

impl Compact {
    /// Add the slave `item` (at `path` in the file).
    fn add(&mut self, item: &Value, unit_id: u8, path: &str, device: &str) {
        use tbgw_modbus_tags::PROFILE_KEYS;
        // The unit is part of a profile only where range keys name it.
        let by_unit = ["attributes", "timeseries"]
            .iter()
            .any(|k| item.get(*k).is_some_and(|v| v.to_string().contains("${unitId}")));
        let profile: serde_json::Map<String, Value> = PROFILE_KEYS
            .iter()
            .filter(|k| **k != "unitId" || by_unit)
            .filter_map(|k| item.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        let mut profile = Value::Object(profile);
        let key = profile.to_string();
        let index = match self.profiles.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                // Errors in the profile are its first slave's.
                profile["at"] = Value::String(path.to_owned());
                self.profiles.push((key, profile));
                self.profiles.len() - 1
            }
        };
        let mut slave = serde_json::json!({"deviceName": item.get("deviceName"), "unitId": unit_id, "profile": index});
        if let Some(t) = item.get("deviceType") {
            slave["deviceType"] = t.clone();
        }
        self.slaves.push(slave);
        self.devices.push(device.to_owned());
    }

    fn finish(self, limits: LimitsDecl) -> (ConverterDecl, Vec<String>) {
        let profiles: Vec<Value> = self.profiles.into_iter().map(|(_, p)| p).collect();
        let config = serde_json::json!({ "profiles": profiles, "slaves": self.slaves }).to_string();
        let decl = ConverterDecl {
            // The compact config names the slaves' own paths.
            path: String::new(),
            label: "modbus".into(),
            component: ComponentRef::Builtin("modbus".into()),
            config,
            limits,
        };
        (decl, self.devices)
    }
}

/// The built-in converter's slaves, one compact config per distinct limits.
#[derive(Default)]
struct Groups(Vec<(LimitsDecl, Compact, Vec<usize>)>);

impl Groups {
    fn add(&mut self, limits: LimitsDecl, slave: usize, item: &Value, s: &SlaveConfig) {
        let i = match self.0.iter().position(|(l, _, _)| *l == limits) {
            Some(i) => i,
            None => {
                self.0.push((limits, Compact::default(), Vec::new()));
                self.0.len() - 1
            }
        };
        let (_, compact, slaves) = &mut self.0[i];
        compact.add(item, s.unit_id, &s.path, &s.device_name);
        slaves.push(slave);
    }
}

/// Read `modbus.json` (custom converters' paths relative to `base_dir`);
/// problems go to `d` by path.
pub fn parse(doc: &Value, base_dir: &Path, d: &mut Diagnostics) -> Option<ModbusConfig> {
    let mut root = Obj::new(d, "", doc)?;
    let mut slaves = Vec::new();
    let (mut uplinks, mut downlinks) = (Groups::default(), Groups::default());
    let mut report = ReportPolicy {
        route: root.get("reportStrategy").and_then(|v| report::parse(d, "reportStrategy", v)),
        ..Default::default()
    };
    match root.object(d, "master") {
        Some(mut master) => {
            for (path, item) in master.list(d, "slaves") {
                if let Some(s) = slave(d, &path, item, base_dir) {
                    if let SlaveConverter::Builtin(limits) = s.uplink {
                        uplinks.add(limits, slaves.len(), item, &s);
                    }
                    if let SlaveConverter::Builtin(limits) = s.downlink {
                        downlinks.add(limits, slaves.len(), item, &s);
                    }
                    slave_report(d, &path, item, &s, &mut report);
                    slaves.push(s);
                }
            }
            master.finish(d);
        }
        None if !root.has("master") => d.error("master", "required: the slaves to poll (`master.slaves`)"),
        None => {}
    }
    root.unused(d, &[("slave", "tbgw does not serve as a Modbus slave")]);
    root.allow(&tbgw_core::config::GATEWAY_KEYS);
    root.allow(&["name", "id", "reportStrategy"]);
    root.finish(d);
    check_lines(d, &slaves);
    if slaves.is_empty() && d.is_ok() {
        d.error("master.slaves", "no slave: the connector would poll nothing");
    }
    let mut names: Vec<&str> = slaves.iter().map(|s| s.device_name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        d.error("master.slaves", format!("two slaves are named `{}`: requests could not tell them apart", w[0]));
    }
    // The routes: each built-in group, then each custom converter.
    let mut routes = Vec::new();
    let mut slave_routes = vec![0; slaves.len()];
    for (limits, compact, members) in uplinks.0 {
        for m in members {
            slave_routes[m] = routes.len();
        }
        routes.push(RouteDecl { converter: compact.finish(limits).0, report: report.clone(), answers: None });
    }
    let mut downlink_decls = Vec::new();
    for (limits, compact, _) in downlinks.0 {
        let (converter, devices) = compact.finish(limits);
        downlink_decls.push(DownlinkDecl { converter, devices: Devices::Named(devices) });
    }
    for (i, s) in slaves.iter().enumerate() {
        if let SlaveConverter::Custom(c) = &s.uplink {
            slave_routes[i] = routes.len();
            routes.push(RouteDecl { converter: c.clone(), report: report.clone(), answers: None });
        }
        if let SlaveConverter::Custom(c) = &s.downlink {
            downlink_decls
                .push(DownlinkDecl { converter: c.clone(), devices: Devices::Named(vec![s.device_name.clone()]) });
        }
    }
    Some(ModbusConfig { slaves, routes, slave_routes, downlinks: downlink_decls, report })
}

/// A slave's `uplink_converter` or `downlink_converter` (`key`): a `.wasm`
/// path, configured with the slave's own object as the Python gateway's
/// converters are, or a converter entry; the built-in `modbus` by default.
fn slave_converter(d: &mut Diagnostics, s: &mut Obj, item: &Value, key: &'static str, base: &Path) -> SlaveConverter {
    let path = s.field(key);
    match s.get(key) {
        None => SlaveConverter::Builtin(LimitsDecl::default()),
        Some(Value::String(file)) => match setup::wasm_file(d, &path, file) {
            Some(file) => {
                SlaveConverter::Custom(setup::custom(&path, base, file, item.to_string(), LimitsDecl::default()))
            }
            None => SlaveConverter::Builtin(LimitsDecl::default()),
        },
        Some(entry) => match setup::converter(d, &path, entry, base, "modbus") {
            Some(c) if c.component == ComponentRef::Builtin("modbus".into()) => {
                // The built-in `modbus` is configured by the slave itself.
                setup::only_type_and_limits(d, &path, entry);
                SlaveConverter::Builtin(c.limits)
            }
            Some(ConverterDecl { component: ComponentRef::Builtin(other), .. }) => {
                d.error(
                    format!("{path}.type"),
                    format!("`{other}` is not a Modbus converter; expected modbus or custom"),
                );
                SlaveConverter::Builtin(LimitsDecl::default())
            }
            Some(c) => SlaveConverter::Custom(c),
            None => SlaveConverter::Builtin(LimitsDecl::default()),
        },
    }
}

/// A slave's report strategies: its own `reportStrategy` (or the older
/// `sendDataOnlyOnChange`), and its tags' (every key of an address range).
fn slave_report(d: &mut Diagnostics, path: &str, item: &Value, s: &SlaveConfig, report: &mut ReportPolicy) {
    let own = match item.get("reportStrategy") {
        Some(v) => report::parse(d, &format!("{path}.reportStrategy"), v),
        None => (item.get("sendDataOnlyOnChange") == Some(&Value::Bool(true))).then_some(Strategy::OnChange),
    };
    if let Some(own) = own {
        report.devices.insert(s.device_name.clone(), own);
    }
    for section in ["attributes", "timeseries"] {
        let Some(Value::Array(entries)) = item.get(section) else { continue };
        for (i, e) in entries.iter().enumerate() {
            let Some(v) = e.get("reportStrategy") else { continue };
            let Some(strategy) = report::parse(d, &format!("{path}.{section}[{i}].reportStrategy"), v) else {
                continue;
            };
            let keys = report.device_keys.entry(s.device_name.clone()).or_default();
            for key in tbgw_modbus_tags::entry_keys(e, s.unit_id) {
                keys.insert(key, strategy);
            }
        }
    }
}

impl SlaveConfig {
    /// The line this slave is polled on when it shares one: a serial port
    /// (an RS-485 bus), or a serial device server reached with RTU frames
    /// over TCP or UDP. Such a line carries one request at a time, and RTU
    /// frames say nothing of which request they answer, so its slaves take
    /// turns on one connection. A Modbus TCP (or UDP) slave has its own
    /// connection (`None`): MBAP frames carry a transaction id and a device
    /// or gateway answers each connection on its own.
    pub fn line(&self) -> Option<String> {
        match &self.framing {
            Framing::Serial(s) => Some(s.path.clone()),
            Framing::RtuOverTcp => Some(format!("{}:{} (rtu over tcp)", self.host, self.port)),
            Framing::RtuOverUdp => Some(format!("{}:{} (rtu over udp)", self.host, self.port)),
            Framing::Tcp | Framing::Udp => None,
        }
    }
}

/// Slaves sharing a line must agree on its settings and have their own
/// unit ids (the only thing that tells their frames apart).
fn check_lines(d: &mut Diagnostics, slaves: &[SlaveConfig]) {
    for (i, s) in slaves.iter().enumerate() {
        let Some(line) = s.line() else { continue };
        let Some(first) = slaves[..i].iter().find(|o| o.line().as_deref() == Some(line.as_str())) else { continue };
        if first.unit_id == s.unit_id {
            d.error(
                format!("{}.unitId", s.path),
                format!(
                    "{} on `{line}` has unitId {} too: units on one line need their own ids",
                    first.path, s.unit_id
                ),
            );
        }
        if let (Framing::Serial(a), Framing::Serial(b)) = (&first.framing, &s.framing)
            && a != b
        {
            d.error(
                s.path.clone(),
                format!(
                    "`{line}` is set to {} {}{}{} by {}, here to {} {}{}{}: one port has one setting",
                    a.baudrate,
                    a.bytesize,
                    a.parity,
                    a.stopbits,
                    first.path,
                    b.baudrate,
                    b.bytesize,
                    b.parity,
                    b.stopbits
                ),
            );
        }
    }
}

fn slave(d: &mut Diagnostics, path: &str, item: &Value, base: &Path) -> Option<SlaveConfig> {
    let mut s = Obj::new(d, path, item)?;
    let kind = s.string(d, "type").unwrap_or("tcp").to_ascii_lowercase();
    let method = s.string(d, "method").unwrap_or(if kind == "serial" { "rtu" } else { "socket" }).to_ascii_lowercase();
    let serial = kind == "serial";
    let framing = match (kind.as_str(), method.as_str()) {
        ("serial", "rtu") => serial_settings(d, &mut s).map(Framing::Serial),
        ("serial", other) => {
            d.error(s.field("method"), format!("`{other}` on a serial port: tbgw speaks rtu"));
            None
        }
        ("tcp", "socket" | "tcp") => Some(Framing::Tcp),
        ("tcp", "rtu") => Some(Framing::RtuOverTcp),
        ("tcp", other) => {
            d.error(s.field("method"), format!("unknown method `{other}`; expected socket or rtu"));
            None
        }
        ("udp", "socket" | "tcp" | "udp") => Some(Framing::Udp),
        ("udp", "rtu") => Some(Framing::RtuOverUdp),
        ("udp", other) => {
            d.error(s.field("method"), format!("unknown method `{other}`; expected socket or rtu"));
            None
        }
        (other, _) => {
            d.error(s.field("type"), format!("unknown type `{other}`; expected tcp, udp or serial"));
            None
        }
    };
    // A serial slave has no host; its `port` is the device's path.
    let (host, port) = if serial {
        (Some(String::new()), 0)
    } else {
        (s.required_string(d, "host").map(str::to_owned), s.uint(d, "port", 1..=65535).unwrap_or(502) as u16)
    };
    let unit_id = s.uint(d, "unitId", 0..=247).unwrap_or(1) as u8;
    let device_name = s.required_string(d, "deviceName").map(str::to_owned);
    let device_type = s.string(d, "deviceType").map(str::to_owned);
    let poll_period = Duration::from_millis(s.uint(d, "pollPeriod", 10..=86_400_000).unwrap_or(5000));
    // Seconds, as in the Python gateway (pymodbus's timeout, a float).
    let timeout = match s.get("timeout") {
        None => Duration::from_secs(5),
        Some(v) => match v.as_f64() {
            Some(t) if (0.01..=3600.0).contains(&t) => Duration::from_secs_f64(t),
            _ => {
                d.error(s.field("timeout"), format!("expected seconds from 0.01 to 3600, found {v}"));
                Duration::from_secs(5)
            }
        },
    };
    // The Python gateway's own examples say `"retries": true`: 3, as it reads it.
    let retries = match s.get("retries") {
        Some(Value::Bool(b)) => u32::from(*b) * 3,
        Some(_) => s.uint(d, "retries", 0..=100).unwrap_or(3) as u32,
        None => 3,
    };
    let delay_between_requests = Duration::from_millis(s.uint(d, "delayBetweenRequestsMs", 0..=60_000).unwrap_or(0));
    let connect_timeout = Duration::from_millis(s.uint(d, "connectAttemptTimeMs", 100..=600_000).unwrap_or(5000));
    let connect_attempts = s.uint(d, "connectAttemptCount", 1..=1000).unwrap_or(5) as u32;
    let wait_after_failed_attempts =
        Duration::from_millis(s.uint(d, "waitAfterFailedAttemptsMs", 0..=86_400_000).unwrap_or(300_000));
    let max_gap = s.uint(d, "maxGap", 0..=125).unwrap_or(0) as u16;
    let max_registers = s.uint(d, "maxRegistersPerRequest", 1..=125).unwrap_or(125) as u16;
    s.unused(
        d,
        &[
            ("retryOnEmpty", "tbgw retries every failed read `retries` times"),
            ("retryOnInvalid", "tbgw retries every failed read `retries` times"),
        ],
    );
    let uplink = slave_converter(d, &mut s, item, "uplink_converter", base);
    let downlink = slave_converter(d, &mut s, item, "downlink_converter", base);
    // The rest is the converter's (it checks it), and the report strategy
    // (read by `slave_report`).
    s.allow(&["byteOrder", "wordOrder", "attributes", "timeseries", "attributeUpdates", "rpc", "name", "id", "strict"]);
    s.allow(&["reportStrategy", "sendDataOnlyOnChange"]);
    s.finish(d);
    // Where each tag is, to plan the reads (how it decodes is the converter's).
    let reads = match tbgw_modbus_tags::reads(path, item, unit_id) {
        Ok(spans) => {
            if spans.is_empty() {
                d.notice(path, "no attributes or timeseries: nothing is polled (writes only)");
            }
            planner::plan(&spans, max_gap, max_registers)
        }
        Err(e) => {
            d.error(e.field.unwrap_or_else(|| path.to_owned()), e.message);
            Vec::new()
        }
    };
    Some(SlaveConfig {
        path: path.to_owned(),
        device_name: device_name?,
        device_type,
        host: host?,
        port,
        framing: framing?,
        unit_id,
        poll_period,
        timeout,
        retries,
        delay_between_requests,
        connect_timeout,
        connect_attempts,
        wait_after_failed_attempts,
        reads,
        uplink,
        downlink,
    })
}

/// `port` (the path), `baudrate`, `parity`, `stopbits`, `bytesize`.
fn serial_settings(d: &mut Diagnostics, s: &mut Obj) -> Option<SerialSettings> {
    let path = s.required_string(d, "port").map(str::to_owned);
    let baudrate = s.uint(d, "baudrate", 50..=4_000_000).unwrap_or(19200) as u32;
    let parity = match s.string(d, "parity").unwrap_or("N").to_ascii_uppercase().as_str() {
        "N" | "NONE" => 'N',
        "E" | "EVEN" => 'E',
        "O" | "ODD" => 'O',
        other => {
            d.error(s.field("parity"), format!("`{other}`: expected N, E or O"));
            'N'
        }
    };
    let stopbits = s.uint(d, "stopbits", 1..=2).unwrap_or(1) as u8;
    let bytesize = s.uint(d, "bytesize", 5..=8).unwrap_or(8) as u8;
    Some(SerialSettings { path: path?, baudrate, parity, stopbits, bytesize })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> (Option<ModbusConfig>, Diagnostics) {
        let doc: Value = serde_json::from_str(text).unwrap();
        let mut d = Diagnostics::default();
        (parse(&doc, Path::new("/etc/tbgw"), &mut d), d)
    }

    #[test]
    fn reads_a_python_gateway_slave() {
        let (c, d) = parse_str(
            r#"{"master": {"slaves": [{"host": "127.0.0.1", "port": 5021, "type": "tcp", "method": "socket",
                "unitId": 1, "deviceName": "Demo Device", "deviceType": "default", "timeout": 35, "byteOrder": "BIG",
                "wordOrder": "LITTLE", "retries": 3, "retryOnEmpty": true, "retryOnInvalid": true, "pollPeriod": 1000,
                "connectAttemptTimeMs": 5000, "connectAttemptCount": 5, "waitAfterFailedAttemptsMs": 300000,
                "attributes": [{"tag": "power", "type": "16int", "functionCode": 3, "objectsCount": 1, "address": 2, "divider": 10}],
                "timeseries": [{"tag": "temperature", "type": "16int", "address": 0, "objectsCount": 1, "functionCode": 3, "divider": 10},
                               {"tag": "humidity", "type": "16int", "address": 1, "objectsCount": 1, "functionCode": 3},
                               {"tag": "relay", "type": "bits", "address": 1, "objectsCount": 1, "functionCode": 1, "bitTargetType": "bool"}],
                "attributeUpdates": [{"tag": "relay", "type": "bits", "address": 1, "objectsCount": 1, "functionCode": 5}],
                "rpc": [{"tag": "getRelay", "type": "bits", "address": 1, "objectsCount": 1, "functionCode": 1}]}]}}"#,
        );
        assert!(d.is_ok(), "{:?}", d.errors);
        let c = c.unwrap();
        let s = &c.slaves[0];
        assert_eq!((s.host.as_str(), s.port, s.unit_id, s.framing.clone()), ("127.0.0.1", 5021, 1, Framing::Tcp));
        assert_eq!((s.poll_period, s.timeout), (Duration::from_secs(1), Duration::from_secs(35)));
        assert_eq!(
            s.reads,
            [Read { function_code: 1, address: 1, count: 1 }, Read { function_code: 3, address: 0, count: 3 }]
        );
        assert_eq!(d.notices.len(), 2, "retryOnEmpty, retryOnInvalid: {:?}", d.notices);
    }

    #[test]
    fn address_ranges_are_planned_and_keyed_per_slave() {
        let slave = |name: &str, unit: u8| {
            format!(
                r#"{{"host": "h", "deviceName": "{name}", "unitId": {unit}, "timeseries": [
                    {{"tag": "u${{unitId}}_r${{address}}", "type": "16uint", "functionCode": 3, "address": "100-199"}},
                    {{"tag": "flag", "type": "bits", "functionCode": 1, "address": "0-15"}}]}}"#
            )
        };
        let (c, d) = parse_str(&format!(r#"{{"master": {{"slaves": [{}, {}]}}}}"#, slave("A", 1), slave("B", 2)));
        assert!(d.is_ok(), "{:?}", d.errors);
        let c = c.unwrap();
        assert_eq!(
            c.slaves[0].reads,
            [Read { function_code: 1, address: 0, count: 16 }, Read { function_code: 3, address: 100, count: 100 }]
        );
        // One route for both; as the keys name the unit, the converter gets
        // a profile per slave, each saying where it is in the file.
        use tbgw_core::setup::ConnectorSetup;
        let routes = c.routes();
        assert_eq!((routes.len(), c.route_of(0), c.route_of(1)), (1, 0, 0));
        let compact: Value = serde_json::from_str(&routes[0].converter.config).unwrap();
        let at: Vec<&str> = compact["profiles"].as_array().unwrap().iter().map(|p| p["at"].as_str().unwrap()).collect();
        assert_eq!(at, ["master.slaves[0]", "master.slaves[1]"]);
        assert_eq!(compact["slaves"][1], serde_json::json!({"deviceName": "B", "unitId": 2, "profile": 1}));
    }

    #[test]
    fn slaves_name_custom_converters_as_the_python_gateway() {
        let tag = r#""timeseries": [{"tag": "t", "type": "16int", "functionCode": 3, "address": 0}]"#;
        let (c, d) = parse_str(&format!(
            r#"{{"master": {{"slaves": [
                {{"host": "h", "deviceName": "A", {tag}}},
                {{"host": "h", "deviceName": "B", "uplink_converter": "conv/up.wasm", {tag}}},
                {{"host": "h", "deviceName": "C", {tag}, "uplink_converter": {{"type": "modbus", "limits": {{"timeoutMs": 50}}}},
                  "downlink_converter": {{"type": "custom", "extension": "conv/down.wasm", "extensionConfig": {{"k": 1}}}}}},
                {{"host": "h", "deviceName": "D", {tag}}}]}}}}"#
        ));
        assert!(d.is_ok(), "{:?}", d.errors);
        let c = c.unwrap();
        use tbgw_core::setup::ConnectorSetup;
        let routes = c.routes();
        // Built-in slaves A and D share a route; C's limits make one of its own; B's is custom.
        let labels: Vec<&str> = routes.iter().map(|r| r.converter.label.as_str()).collect();
        assert_eq!(labels, ["modbus", "modbus", "conv/up.wasm"]);
        assert_eq!((c.route_of(0), c.route_of(1), c.route_of(2), c.route_of(3)), (0, 2, 1, 0));
        assert_eq!(routes[1].converter.limits.timeout_ms, Some(50));
        let b = &routes[2].converter;
        assert_eq!(b.component, ComponentRef::File("/etc/tbgw/conv/up.wasm".into()));
        assert!(b.config.contains(r#""deviceName":"B""#), "configured with the slave: {}", b.config);
        let downlinks = c.downlinks();
        assert_eq!(downlinks.len(), 2);
        assert_eq!(downlinks[0].devices, Devices::Named(vec!["A".into(), "B".into(), "D".into()]));
        assert_eq!(downlinks[1].devices, Devices::Named(vec!["C".into()]));
        assert_eq!(downlinks[1].converter.config, r#"{"k":1}"#);

        let (_, d) = parse_str(&format!(
            r#"{{"master": {{"slaves": [{{"host": "h", "deviceName": "A", {tag}, "uplink_converter": "CustomModbusUplinkConverter",
                "downlink_converter": {{"type": "json"}}}}]}}}}"#
        ));
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        assert!(
            errors[0]
                .starts_with("master.slaves[0].uplink_converter: `CustomModbusUplinkConverter` is not a .wasm file")
        );
        assert_eq!(
            errors[1],
            "master.slaves[0].downlink_converter.type: `json` is not a Modbus converter; expected modbus or custom"
        );
    }

    #[test]
    fn report_strategies_at_every_level() {
        let (c, d) = parse_str(
            r#"{"reportStrategy": {"type": "ON_REPORT_PERIOD", "reportPeriod": 60000},
                "master": {"slaves": [
                  {"host": "h", "deviceName": "A", "sendDataOnlyOnChange": true, "timeseries": [
                    {"tag": "r${address}", "type": "16int", "functionCode": 3, "address": "0-1",
                     "reportStrategy": {"type": "ON_CHANGE_OR_REPORT_PERIOD", "reportPeriod": 5000}}]},
                  {"host": "h", "deviceName": "B", "reportStrategy": {"type": "ON_RECEIVED"}},
                  {"host": "h", "deviceName": "C", "reportStrategy": {"type": "NEVER"}}]}}"#,
        );
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("master.slaves[2].reportStrategy.type: unknown report strategy `NEVER`"));
        let r = c.unwrap().report;
        assert_eq!(r.route, Some(Strategy::OnReportPeriod(60_000)));
        assert_eq!(r.strategy(Strategy::OnReceived, "A", "other"), Strategy::OnChange);
        assert_eq!(r.strategy(Strategy::OnReceived, "A", "r1"), Strategy::OnChangeOrReportPeriod(5000));
        assert_eq!(r.strategy(Strategy::OnReceived, "B", "r1"), Strategy::OnReceived);
        assert_eq!(r.strategy(Strategy::OnReceived, "D", "x"), Strategy::OnReportPeriod(60_000));
    }

    #[test]
    fn serial_slaves() {
        let tag = r#""timeseries": [{"tag": "t", "type": "16int", "functionCode": 3, "address": 0}]"#;
        let (c, d) = parse_str(&format!(
            r#"{{"master": {{"slaves": [{{"type": "serial", "port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "E",
                "stopbits": 2, "bytesize": 7, "deviceName": "A", {tag}}}]}}}}"#
        ));
        assert!(d.is_ok(), "{:?}", d.errors);
        let expected =
            SerialSettings { path: "/dev/ttyUSB0".into(), baudrate: 9600, parity: 'E', stopbits: 2, bytesize: 7 };
        assert_eq!(c.unwrap().slaves[0].framing, Framing::Serial(expected));
        let (_, d) = parse_str(&format!(
            r#"{{"master": {{"slaves": [{{"type": "serial", "port": "/dev/ttyS0", "parity": "X", "deviceName": "A", {tag}}},
                {{"type": "serial", "port": "/dev/ttyS0", "method": "ascii", "deviceName": "B", {tag}}}]}}}}"#
        ));
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        for expected in [
            "master.slaves[0].parity: `X`: expected N, E or O",
            "master.slaves[1].method: `ascii` on a serial port: tbgw speaks rtu",
        ] {
            assert!(errors.contains(&expected.to_owned()), "missing `{expected}` in {errors:#?}");
        }
    }

    #[test]
    fn slaves_on_one_bus_share_its_line() {
        let unit = |name: &str, unit: u8, baud: u32| {
            format!(
                r#"{{"type": "serial", "port": "/dev/ttyUSB0", "baudrate": {baud}, "unitId": {unit}, "deviceName": "{name}",
                    "delayBetweenRequestsMs": 20, "timeseries": [{{"tag": "t", "type": "16int", "functionCode": 3, "address": 0}}]}}"#
            )
        };
        let rtu_tcp = |name: &str, unit: u8| {
            format!(
                r#"{{"host": "10.0.0.9", "port": 4001, "method": "rtu", "unitId": {unit}, "deviceName": "{name}"}}"#
            )
        };
        let tcp = |name: &str| format!(r#"{{"host": "10.0.0.9", "port": 502, "unitId": 1, "deviceName": "{name}"}}"#);
        let (c, d) = parse_str(&format!(
            r#"{{"master": {{"slaves": [{}, {}, {}, {}, {}, {}]}}}}"#,
            unit("A", 1, 9600),
            unit("B", 2, 9600),
            rtu_tcp("C", 1),
            rtu_tcp("D", 2),
            tcp("E"),
            tcp("F")
        ));
        assert!(d.is_ok(), "{:?}", d.errors);
        let lines: Vec<Option<String>> = c.unwrap().slaves.iter().map(SlaveConfig::line).collect();
        let bus = Some("/dev/ttyUSB0".to_owned());
        let server = Some("10.0.0.9:4001 (rtu over tcp)".to_owned());
        assert_eq!(lines, [bus.clone(), bus, server.clone(), server, None, None]);
        // One bus, one setting; one unit id per unit.
        let (_, d) = parse_str(&format!(
            r#"{{"master": {{"slaves": [{}, {}, {}]}}}}"#,
            unit("A", 1, 9600),
            unit("B", 1, 9600),
            unit("C", 3, 19200)
        ));
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "master.slaves[1].unitId: master.slaves[0] on `/dev/ttyUSB0` has unitId 1 too: units on one line need their own ids",
                "master.slaves[2]: `/dev/ttyUSB0` is set to 9600 8N1 by master.slaves[0], here to 19200 8N1: one port has one setting",
            ]
        );
    }

    #[test]
    fn problems_are_named_by_path() {
        let (_, d) = parse_str(
            r#"{"master": {"slaves": [{"type": "can", "deviceName": "A", "pollPeriod": 1,
                "timeseries": [{"tag": "t", "type": "32int", "functionCode": 3, "address": 0, "objectsCount": 1}]},
                {"host": "h", "deviceName": "B", "method": "ascii", "prot": 1}]}}"#,
        );
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        for expected in [
            "master.slaves[0].type: unknown type `can`; expected tcp, udp or serial",
            "master.slaves[0].host: required",
            "master.slaves[0].pollPeriod: expected a whole number from 10 to 86400000, found 1",
            "master.slaves[1].method: unknown method `ascii`; expected socket or rtu",
            "master.slaves[1].prot: unknown key; did you mean `port`?",
        ] {
            assert!(errors.contains(&expected.to_owned()), "missing `{expected}` in {errors:#?}");
        }
        assert!(errors.iter().any(|e| e.starts_with("master.slaves[0].timeseries[0].objectsCount:")), "{errors:#?}");
    }
}

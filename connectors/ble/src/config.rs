//! The BLE connector's configuration: the ThingsBoard IoT Gateway's
//! `ble.json`, so that its users' files load unchanged.
//!
//! ```json
//! {"name": "BLE Connector", "passiveScanMode": true, "showMap": false,
//!  "scanner": {"timeout": 10000, "deviceName": "Device name"},
//!  "devices": [{"name": "Sensor", "MACAddress": "4C:65:A8:DF:85:C0", "telemetry": [...], ...}]}
//! ```
//!
//! The devices are [`tbgw_ble_items`]'s; their values, expressions and
//! writes the `ble` converters' (configured with the whole document). A
//! device's `converters` (`{"uplink": ..., "downlink": ...}`) may name
//! `.wasm` components or converter entries instead, configured with the
//! device's object (the Python gateway's `extension` names a Python class,
//! which is refused with why). Of
//! the connector's keys: BlueZ discovers continuously once the scan starts,
//! so `scannerPollPeriod` and `scannerTimeout` (the Python gateway's bleak
//! scans in rounds) only bound how long the first scan is waited for;
//! `passiveScanMode` is accepted with a notice (BlueZ's D-Bus API has no
//! passive scan); `showMap` and `scanner` log what the scan found, the
//! devices named `scanner.deviceName` or all of them.

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tbgw_ble_items::{Connection, DataSource, Method, Schema};
use tbgw_core::config::{Diagnostics, Obj};
use tbgw_core::report::{self, ReportPolicy};
use tbgw_core::setup::{self, ComponentRef, ConverterDecl, DeviceEntry, DownlinkDecl, LimitsDecl, RouteDecl};

/// One configured device, as the connector drives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub name: String,
    pub device_type: Option<String>,
    /// `AA:BB:CC:DD:EE:FF`.
    pub address: String,
    pub connection: Connection,
    /// Connected to (else only its advertisements are listened to).
    pub connects: bool,
    pub show_map: bool,
    /// Characteristics read every poll period (lowercase 128-bit UUIDs).
    pub reads: Vec<String>,
    /// Characteristics subscribed to.
    pub notifies: Vec<String>,
    /// It has keys that read its advertisements.
    pub advertises: bool,
}

/// What `showMap`/`scanner` ask the connector to log after its first scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanLog {
    /// Only the devices of this name (`scanner.deviceName`).
    pub name: Option<String>,
}

/// The whole connector configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BleConfig {
    pub devices: Vec<DeviceConfig>,
    /// How long the first scan is waited for before the devices start
    /// looking (`scannerTimeout`, or `scanner.timeout`; 10 s).
    pub first_scan: Duration,
    pub scan_log: Option<ScanLog>,
    /// Uplink routes: the built-in `ble` converter (if a device uses it),
    /// then each device's own.
    pub(crate) route_decls: Vec<RouteDecl>,
    /// The route (an index into `route_decls`) of each device.
    pub(crate) device_routes: Vec<usize>,
    pub(crate) downlinks: Vec<DownlinkDecl>,
}

/// Read `ble.json` (custom converters' paths relative to `base_dir`);
/// problems go to `d` by path.
pub fn parse(doc: &Value, base_dir: &Path, d: &mut Diagnostics) -> Option<BleConfig> {
    let mut root = Obj::new(d, "", doc)?;
    // Rounds of bleak scans in the Python gateway; BlueZ discovers without pause.
    root.uint(d, "scannerPollPeriod", 0..=u64::from(u32::MAX));
    let mut timeout = root.uint(d, "scannerTimeout", 1..=u64::from(u32::MAX));
    if root.bool(d, "passiveScanMode") == Some(true) {
        d.notice("passiveScanMode", "BlueZ's D-Bus API scans actively; tbgw cannot ask it for a passive scan");
    }
    let show_map = root.bool(d, "showMap").unwrap_or(false);
    let mut name = None;
    if let Some(mut s) = root.object(d, "scanner") {
        if let Some(t) = s.uint(d, "timeout", 1..=u64::from(u32::MAX)) {
            timeout = timeout.or(Some(t));
        }
        name = s.string(d, "deviceName").map(str::to_owned);
        s.finish(d);
    }
    let route_report = root.get("reportStrategy").and_then(|v| report::parse(d, "reportStrategy", v));
    root.allow(&["devices", "name", "id"]);
    root.allow(&tbgw_core::config::GATEWAY_KEYS);
    root.finish(d);
    let schema = match tbgw_ble_items::read(doc) {
        Ok(s) => s,
        Err(e) => {
            d.error(e.field.unwrap_or_default(), e.message);
            return None;
        }
    };
    let mut policy = ReportPolicy { route: route_report, ..Default::default() };
    reports(d, &schema, &mut policy);
    let devices = schema
        .devices
        .iter()
        .enumerate()
        .map(|(i, dev)| {
            let keys = || schema.items.iter().filter(move |it| it.device == i);
            let chars = |want: Method| {
                let mut v: Vec<String> = keys()
                    .filter_map(|it| match &it.source {
                        DataSource::Characteristic { uuid, method } if *method == want => Some(uuid.clone()),
                        _ => None,
                    })
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            DeviceConfig {
                name: dev.name.to_owned(),
                device_type: dev.device_type.map(str::to_owned),
                address: dev.address.clone(),
                connection: dev.connection,
                connects: dev.connects(&schema.items, i),
                show_map: dev.show_map,
                reads: chars(Method::Read),
                notifies: chars(Method::Notify),
                advertises: keys().any(|it| matches!(it.source, DataSource::Advertisement(_))),
            }
        })
        .collect();
    let builtin = ConverterDecl {
        path: String::new(),
        label: "ble".into(),
        component: ComponentRef::Builtin("ble".into()),
        config: doc.to_string(),
        limits: LimitsDecl::default(),
    };
    let entries: Vec<DeviceEntry> =
        schema.devices.iter().map(|dev| DeviceEntry { path: &dev.path, name: dev.name, object: dev.object }).collect();
    let (route_decls, device_routes, downlinks) =
        setup::device_converters(d, "ble", &builtin, &entries, base_dir, &policy);
    Some(BleConfig {
        devices,
        first_scan: Duration::from_millis(timeout.unwrap_or(10_000)),
        scan_log: show_map.then_some(ScanLog { name }),
        route_decls,
        device_routes,
        downlinks,
    })
}

/// Report strategies: a device's `reportStrategy`, and its keys'.
fn reports(d: &mut Diagnostics, schema: &Schema, policy: &mut ReportPolicy) {
    for dev in &schema.devices {
        if let Some(v) = dev.object.get("reportStrategy")
            && let Some(s) = report::parse(d, &format!("{}.reportStrategy", dev.path), v)
        {
            policy.devices.insert(dev.name.to_owned(), s);
        }
    }
    for item in &schema.items {
        let Some(v) = item.entry.get("reportStrategy") else { continue };
        if let Some(s) = report::parse(d, &format!("{}.reportStrategy", item.path), v) {
            let device = schema.devices[item.device].name.to_owned();
            policy.device_keys.entry(device).or_default().insert(item.key.to_owned(), s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config, its errors and its notices.
    fn read(text: &str) -> (Option<BleConfig>, Vec<String>, Vec<String>) {
        let doc: Value = serde_json::from_str(text).expect("test JSON");
        let mut d = Diagnostics::default();
        let c = parse(&doc, Path::new("/etc/tbgw"), &mut d);
        (c, d.errors.iter().map(ToString::to_string).collect(), d.notices.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn the_python_gateways_sample_loads_with_a_notice_for_passive_scans() {
        let (c, errors, notices) = read(include_str!("../../../config/ble.json"));
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(
            notices,
            vec!["passiveScanMode: BlueZ's D-Bus API scans actively; tbgw cannot ask it for a passive scan".to_owned()]
        );
        let c = c.expect("the sample loads");
        let dev = &c.devices[0];
        assert_eq!(dev.reads, vec!["00002a00-0000-1000-8000-00805f9b34fb".to_owned()]);
        assert_eq!(dev.notifies, vec!["226caa55-6476-4566-7562-66734470666d".to_owned()]);
        assert!(dev.connects && !dev.advertises);
        assert_eq!(c.first_scan, Duration::from_secs(10));
        assert_eq!(c.scan_log, None);
    }

    #[test]
    fn connector_keys_are_checked_by_path() {
        let device = r#""devices": [{"name": "A", "MACAddress": "AA:BB:CC:DD:EE:FF"}]"#;
        let (_, errors, _) = read(&format!(r#"{{"scanner": {{"timeout": "x"}}, {device}}}"#));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("scanner.timeout: "), "{errors:?}");
        let (_, errors, _) = read(&format!(r#"{{"scaner": {{}}, {device}}}"#));
        assert!(errors[0].starts_with("scaner: unknown"), "{errors:?}");
        let (c, errors, _) = read(&format!(r#"{{"showMap": true, "scanner": {{"deviceName": "Thermo"}}, {device}}}"#));
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(c.expect("loads").scan_log, Some(ScanLog { name: Some("Thermo".into()) }));
    }

    #[test]
    fn a_device_may_bring_its_own_converters() {
        let (_, errors, _) = read(
            r#"{"devices": [{"name": "A", "MACAddress": "AA:BB:CC:DD:EE:FF"},
                            {"name": "B", "MACAddress": "AA:BB:CC:DD:EE:01", "converters": {"uplink": "b.wasm"}},
                            {"name": "C", "MACAddress": "AA:BB:CC:DD:EE:02", "converters": {"uplink": "Custom.py"}}]}"#,
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("devices[2].converters.uplink: `Custom.py` is not a .wasm file"), "{errors:?}");
        let (c, errors, _) = read(
            r#"{"devices": [{"name": "A", "MACAddress": "AA:BB:CC:DD:EE:FF"},
                            {"name": "B", "MACAddress": "AA:BB:CC:DD:EE:01", "converters": {"uplink": "b.wasm", "downlink": "b.wasm"}}]}"#,
        );
        assert_eq!(errors, Vec::<String>::new());
        let c = c.expect("loads");
        assert_eq!(c.route_decls.len(), 2);
        assert_eq!(c.device_routes, vec![0, 1]);
        assert_eq!(c.route_decls[1].converter.component, ComponentRef::File("/etc/tbgw/b.wasm".into()));
        assert_eq!(c.downlinks.len(), 2);
    }
}

//! The seam between the gateway and a connector crate: what a connector
//! kind gives the gateway, so that adding a connector is its crate and one
//! line of the gateway's list.
//!
//! A connector crate exports one [`ConnectorKind`]: the `type` configs name
//! it by, and how to read its configuration (with the shared diagnostics,
//! every problem by path). What it reads is a [`ConnectorSetup`]: the
//! converters its routes use (uplink, [`RouteDecl`]) and serve its devices'
//! requests with (downlink, [`DownlinkDecl`]), each a built-in or a custom
//! component with its limits ([`ConverterDecl`]); and, once the gateway has
//! loaded those converters and numbered the routes, the running
//! [`Connector`].
//!
//! [`converter`] reads a converter entry the way every connector writes it
//! (`{"type": "json" | "custom", "extension": "x.wasm", "extensionConfig":
//! {...}, "limits": {"timeoutMs": 50, "memoryMib": 128}}`), so that every
//! connector takes the same keys with the same errors.

use crate::config::{Diagnostics, Obj};
use crate::connector::{Connector, RouteId};
use crate::report::ReportPolicy;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A kind of connector, as the gateway's list holds it.
pub trait ConnectorKind: Sync {
    /// Its `type` in the gateway config (`mqtt`); also the prefix of the
    /// RPCs to its connectors (`mqtt_publish`).
    fn kind(&self) -> &'static str;

    /// Read a connector's configuration; problems go to `d`, their paths
    /// relative to the document.
    fn parse(&self, doc: &Value, site: &Site<'_>, d: &mut Diagnostics) -> Option<Box<dyn ConnectorSetup>>;
}

/// Where a connector's configuration is.
pub struct Site<'a> {
    /// The connector's name in the gateway config.
    pub name: &'a str,
    /// The directory relative paths (certificates, `.wasm` files) start from.
    pub base_dir: &'a Path,
}

/// A connector's configuration, read.
pub trait ConnectorSetup: Send + Sync {
    /// Its uplink routes, in the order the connector numbers them.
    fn routes(&self) -> Vec<RouteDecl>;

    /// Its downlink converters, and the devices each serves (the first that
    /// names a device serves it).
    fn downlinks(&self) -> Vec<DownlinkDecl>;

    /// The running connector; `routes[i]` is the id the gateway gave
    /// `self.routes()[i]`.
    fn build(&self, name: &str, routes: &[RouteId]) -> Box<dyn Connector>;
}

/// An uplink route: the converter of some of a connector's messages.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDecl {
    pub converter: ConverterDecl,
    /// Its values' report strategies below the gateway's.
    pub report: ReportPolicy,
    /// The downlink converter that answers the devices' attribute requests
    /// this route's converter recognises, when the device's own downlink
    /// converter cannot: a request's `context` is written for the converter
    /// configured alongside the one that recognised it (MQTT's
    /// `requestsMapping`). `None`: the device's downlink converter answers.
    pub answers: Option<ConverterDecl>,
}

/// A downlink converter and the devices it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct DownlinkDecl {
    pub converter: ConverterDecl,
    pub devices: Devices,
}

/// Which of a connector's devices a downlink converter serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    All,
    Named(Vec<String>),
    /// Devices the connector finds as it runs (OPC-UA devices named from
    /// their nodes' values): it adds each to the set as it finds it.
    Found(FoundDevices),
}

impl Devices {
    pub fn contains(&self, device: &str) -> bool {
        match self {
            Devices::All => true,
            Devices::Named(names) => names.iter().any(|n| n == device),
            Devices::Found(found) => found.contains(device),
        }
    }
}

/// A set of device names shared by a connector's configuration (which
/// hands it to the router in a [`DownlinkDecl`]) and the running
/// connector (which fills it). Two sets are equal when they hold the same
/// names.
#[derive(Debug, Clone, Default)]
pub struct FoundDevices(std::sync::Arc<std::sync::RwLock<std::collections::HashSet<String>>>);

impl FoundDevices {
    pub fn insert(&self, device: &str) {
        let mut set = self.0.write().unwrap_or_else(|e| e.into_inner());
        if !set.contains(device) {
            set.insert(device.to_owned());
        }
    }

    pub fn contains(&self, device: &str) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(device)
    }
}

impl PartialEq for FoundDevices {
    fn eq(&self, other: &Self) -> bool {
        if std::sync::Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        let (a, b) =
            (self.0.read().unwrap_or_else(|e| e.into_inner()), other.0.read().unwrap_or_else(|e| e.into_inner()));
        *a == *b
    }
}

impl Eq for FoundDevices {}

/// A converter as a connector's configuration names it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConverterDecl {
    /// Where it is configured, relative to the connector's configuration
    /// (`mapping[2].converter`): where its config errors are reported.
    pub path: String,
    /// How logs and statistics name it, after its connector
    /// (`json`, `conv/my.wasm`, `json (requests)`).
    pub label: String,
    pub component: ComponentRef,
    /// The JSON text `create` gets.
    pub config: String,
    pub limits: LimitsDecl,
}

/// Which component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentRef {
    /// A converter built into tbgw, by name (`json`, `modbus`).
    Builtin(String),
    /// A `.wasm` file.
    File(PathBuf),
}

/// A converter's `limits`; `None` keeps the runtime's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct LimitsDecl {
    /// How long one message may take (a call of N: 100 ms + N × this).
    pub timeout_ms: Option<u64>,
    /// Linear memory of one instance.
    pub memory_mib: Option<u64>,
}

/// Read `limits` {`timeoutMs`, `memoryMib`} of `o`, if it has them.
pub fn limits(d: &mut Diagnostics, o: &mut Obj) -> LimitsDecl {
    let Some(mut l) = o.object(d, "limits") else { return LimitsDecl::default() };
    let decl =
        LimitsDecl { timeout_ms: l.uint(d, "timeoutMs", 1..=600_000), memory_mib: l.uint(d, "memoryMib", 1..=4096) };
    l.finish(d);
    decl
}

/// Read a converter entry `value` at `path`: `{"type": <built-in> |
/// "custom", ...}`, `builtin` when it has no `type`. A built-in is
/// configured with the entry itself (its own keys; `limits` taken out), a
/// custom one with its `extensionConfig`; `extension` is a `.wasm` file,
/// relative to `base_dir`.
pub fn converter(
    d: &mut Diagnostics,
    path: &str,
    value: &Value,
    base_dir: &Path,
    builtin: &str,
) -> Option<ConverterDecl> {
    let mut c = Obj::new(d, path, value)?;
    let name = c.string(d, "type").unwrap_or(builtin).to_owned();
    let limits = limits(d, &mut c);
    if name != "custom" {
        // The built-in reads (and checks) the rest of the entry.
        let mut config = value.clone();
        if let Value::Object(o) = &mut config {
            o.remove("limits");
        }
        return Some(ConverterDecl {
            path: path.to_owned(),
            label: name.clone(),
            component: ComponentRef::Builtin(name),
            config: config.to_string(),
            limits,
        });
    }
    let file = extension(d, &mut c)?;
    let config = c.get("extensionConfig").map(Value::to_string).unwrap_or_else(|| "{}".into());
    c.unused(d, &[("cached", "tbgw always reuses converter instances")]);
    c.finish(d);
    Some(custom(path, base_dir, file, config, limits))
}

/// Refuse in a converter `entry` (at `path`) that names a built-in whose
/// configuration lies elsewhere (a Modbus slave's own object, MQTT's
/// `requestsMapping`) any key but `type` and `limits`: nothing else would
/// read them.
pub fn only_type_and_limits(d: &mut Diagnostics, path: &str, entry: &Value) {
    if let Some(mut c) = Obj::new(d, path, entry) {
        c.allow(&["type", "limits"]);
        c.finish(d);
    }
}

/// A custom converter's `extension`: a `.wasm` file (the Python gateway
/// names a Python class here, which tbgw cannot run).
pub fn extension<'a>(d: &mut Diagnostics, c: &mut Obj<'a>) -> Option<&'a str> {
    let file = c.required_string(d, "extension")?;
    wasm_file(d, &c.field("extension"), file)
}

/// `file` (found at `path`) if it names a `.wasm` component.
pub fn wasm_file<'a>(d: &mut Diagnostics, path: &str, file: &'a str) -> Option<&'a str> {
    if file.ends_with(".wasm") {
        return Some(file);
    }
    d.error(
        path,
        format!(
            "`{file}` is not a .wasm file: tbgw runs converters compiled to WebAssembly components, \
             not Python classes; `tbgw converter new NAME --lang python` starts one in Python (or js, rust)"
        ),
    );
    None
}

/// A custom converter from `file` (relative to `base_dir`), configured with `config`.
pub fn custom(path: &str, base_dir: &Path, file: &str, config: String, limits: LimitsDecl) -> ConverterDecl {
    ConverterDecl {
        path: path.to_owned(),
        label: file.to_owned(),
        component: ComponentRef::File(base_dir.join(file)),
        config,
        limits,
    }
}

/// A device entry of a connector whose converters are per device (CAN,
/// BLE): where it is, its name, its object.
#[derive(Debug, Clone, Copy)]
pub struct DeviceEntry<'a> {
    pub path: &'a str,
    pub name: &'a str,
    pub object: &'a Value,
}

/// What [`device_converters`] reads: the uplink routes (the built-in one
/// first when a device uses it, then each device's own), each device's
/// route (an index into them), the downlinks.
pub type PerDevice = (Vec<RouteDecl>, Vec<usize>, Vec<DownlinkDecl>);

/// The converters of devices that may each bring their own: a device's
/// `converters` (`{"uplink": ..., "downlink": ...}`; the names of Python
/// classes in the Python gateway) may name `.wasm` components or converter
/// entries, configured with the device's object; every other device's
/// messages go to `builtin` (of kind `kind`: `can`, `ble`), configured with
/// the whole document.
pub fn device_converters(
    d: &mut Diagnostics,
    kind: &str,
    builtin: &ConverterDecl,
    devices: &[DeviceEntry],
    base: &Path,
    report: &ReportPolicy,
) -> PerDevice {
    let mut custom_routes = Vec::new();
    // Each device's custom route (an index into `custom_routes`), if it has one.
    let mut own: Vec<Option<usize>> = vec![None; devices.len()];
    let mut builtin_down = Vec::new();
    let mut custom_down = Vec::new();
    for (i, dev) in devices.iter().enumerate() {
        let (mut up, mut down) = (None, None);
        if let Some(c) = dev.object.get("converters") {
            let path = format!("{}.converters", dev.path);
            if let Some(mut o) = Obj::new(d, &path, c) {
                if let Some(e) = o.get("uplink") {
                    up = device_converter(d, kind, &o.field("uplink"), e, dev.object, base);
                }
                if let Some(e) = o.get("downlink") {
                    down = device_converter(d, kind, &o.field("downlink"), e, dev.object, base);
                }
                o.finish(d);
            }
        }
        if let Some(c) = up {
            own[i] = Some(custom_routes.len());
            custom_routes.push(RouteDecl { converter: c, report: report.clone(), answers: None });
        }
        match down {
            Some(c) => {
                custom_down.push(DownlinkDecl { converter: c, devices: Devices::Named(vec![dev.name.to_owned()]) })
            }
            None => builtin_down.push(dev.name.to_owned()),
        }
    }
    let mut routes = Vec::new();
    if own.iter().any(Option::is_none) {
        routes.push(RouteDecl { converter: builtin.clone(), report: report.clone(), answers: None });
    }
    let offset = routes.len();
    routes.extend(custom_routes);
    let device_routes = own.iter().map(|o| o.map_or(0, |j| offset + j)).collect();
    let mut downlinks = Vec::new();
    if !builtin_down.is_empty() {
        downlinks.push(DownlinkDecl { converter: builtin.clone(), devices: Devices::Named(builtin_down) });
    }
    downlinks.extend(custom_down);
    (routes, device_routes, downlinks)
}

/// A device's `converters.uplink` or `.downlink`: `None` for the built-in.
fn device_converter(
    d: &mut Diagnostics,
    kind: &str,
    path: &str,
    entry: &Value,
    device: &Value,
    base: &Path,
) -> Option<ConverterDecl> {
    match entry {
        Value::String(file) => {
            let file = wasm_file(d, path, file)?;
            Some(custom(path, base, file, device.to_string(), LimitsDecl::default()))
        }
        _ => match converter(d, path, entry, base, kind)? {
            c if c.component == ComponentRef::Builtin(kind.into()) => {
                only_type_and_limits(d, path, entry);
                if c.limits != LimitsDecl::default() {
                    d.notice(
                        format!("{path}.limits"),
                        format!("ignored: the built-in `{kind}` converters are shared by every device"),
                    );
                }
                None
            }
            ConverterDecl { component: ComponentRef::Builtin(other), .. } => {
                d.error(
                    format!("{path}.type"),
                    format!("`{other}` is not a {} converter; expected {kind} or custom", kind.to_uppercase()),
                );
                None
            }
            c => Some(c),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (Option<ConverterDecl>, Vec<String>) {
        let doc: Value = serde_json::from_str(text).unwrap();
        let mut d = Diagnostics::default();
        let c = converter(&mut d, "mapping[0].converter", &doc, Path::new("/etc/tbgw"), "json");
        (c, d.errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn built_in_and_custom_entries_with_limits() {
        let (c, errors) = read(r#"{"type": "json", "deviceInfo": {}, "limits": {"timeoutMs": 50}}"#);
        assert!(errors.is_empty(), "{errors:?}");
        let c = c.unwrap();
        assert_eq!(c.component, ComponentRef::Builtin("json".into()));
        assert_eq!(c.config, r#"{"type":"json","deviceInfo":{}}"#, "the built-in gets its keys, not `limits`");
        assert_eq!(c.limits, LimitsDecl { timeout_ms: Some(50), memory_mib: None });
        let (c, errors) = read(
            r#"{"type": "custom", "extension": "c/x.wasm", "extensionConfig": {"k": 1}, "limits": {"memoryMib": 8}}"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let c = c.unwrap();
        assert_eq!(c.component, ComponentRef::File("/etc/tbgw/c/x.wasm".into()));
        assert_eq!((c.config.as_str(), c.label.as_str()), (r#"{"k":1}"#, "c/x.wasm"));
        assert_eq!(c.limits.memory_mib, Some(8));
    }

    #[test]
    fn bad_entries_are_named_by_path() {
        let (_, errors) = read(
            r#"{"type": "custom", "extension": "CustomUplinkConverter", "limits": {"timeoutMs": 0, "memoryMb": 1}}"#,
        );
        assert_eq!(
            errors,
            [
                "mapping[0].converter.limits.timeoutMs: expected a whole number from 1 to 600000, found 0",
                "mapping[0].converter.limits.memoryMb: unknown key; did you mean `memoryMib`?",
                "mapping[0].converter.extension: `CustomUplinkConverter` is not a .wasm file: tbgw runs \
                 converters compiled to WebAssembly components, not Python classes; \
                 `tbgw converter new NAME --lang python` starts one in Python (or js, rust)",
            ]
        );
        let (_, errors) = read(r#"{"type": "custom", "limits": 5}"#);
        assert_eq!(
            errors,
            [
                "mapping[0].converter.limits: expected an object, found a number",
                "mapping[0].converter.extension: required"
            ]
        );
    }
}

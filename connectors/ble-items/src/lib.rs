//! The BLE device schema, as the ThingsBoard IoT Gateway's `ble.json`
//! writes a device: its address and connection settings, and for each key
//! of its `telemetry[]` and `attributes[]` where the value comes from (a
//! GATT characteristic, read every `pollPeriod` or notified; or the
//! device's advertisements), its `attributeUpdates[]` writes and its
//! `serverSideRpc[]`. Plain data, no I/O, no decoding: the BLE connector
//! connects, reads and subscribes with it, and the `ble` converters find a
//! value's keys with it before they decode their `valueExpression`.
//!
//! ```json
//! {"devices": [{"name": "Sensor", "MACAddress": "4C:65:A8:DF:85:C0", "pollPeriod": 5000,
//!   "telemetry": [{"key": "temperature", "method": "notify",
//!                  "characteristicUUID": "226CAA55-6476-4566-7562-66734470666D", "valueExpression": "[2]"}],
//!   "attributes": [{"key": "battery", "method": "read", "characteristicUUID": "2a19", "valueExpression": "[0]"}]}]}
//! ```
//!
//! UUIDs are compared in their lowercase 128-bit form: a 16-bit (`2a19`) or
//! 32-bit one is the Bluetooth base UUID's, a 128-bit one may come with or
//! without dashes, in any case (the Python gateway compares bleak's
//! lowercase text with the file's as written).
//!
//! Where the Python gateway reads only the first manufacturer-data entry
//! of an advertisement, an advertisement key here may say which part it
//! reads: `advertisementData` is `manufacturer` (the default; `companyId`
//! picks an entry, else the first by company id), `service` (`serviceUUID`
//! picks an entry, else the first), `rssi`, `txPower` or `localName`.

use serde_json::Value;
pub use tbgw_data::ConfigError;
use tbgw_data::config::{self, Obj};

/// The keys of a device object, every one of which some part of tbgw reads.
pub const DEVICE_KEYS: &[&str] = &[
    "name",
    "deviceType",
    "MACAddress",
    "pollPeriod",
    "timeout",
    "connectRetry",
    "connectRetryInSeconds",
    "waitAfterConnectRetries",
    "showMap",
    "type",
    "telemetry",
    "attributes",
    "attributeUpdates",
    "serverSideRpc",
    "reportStrategy",
    "converters",
];

/// The metadata key the connector sets on a characteristic's value: how
/// it was got, `read` (polled, or read for an RPC) or `notify`.
pub const METHOD_METADATA: &str = "method";

/// Which section a key is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Attributes,
    Telemetry,
}

/// How a device's `valueExpression`s read bytes (`type`): `bytes` writes the
/// bytes as decimal numbers into the expression's text (`"[0:2]cm"` of
/// `01 02` is `"12cm"`), `hex` reads them as one big-endian integer
/// (`[0:2]` of `01 02` is 258).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Bytes,
    Hex,
}

/// How a characteristic key is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every `pollPeriod`.
    Read,
    /// Subscribed: each notification (or indication) is a value.
    Notify,
}

/// Which part of an advertisement a key reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvField {
    /// A manufacturer-data entry: this company's, or the first.
    Manufacturer(Option<u16>),
    /// A service-data entry: this service's (lowercase 128-bit), or the first.
    Service(Option<String>),
    Rssi,
    TxPower,
    LocalName,
}

/// A number type for tbgw's typed reading of a key's bytes (`valueType`),
/// an extension of the Python gateway's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberType {
    Int(u8),
    Uint(u8),
    Float32,
    Float64,
}

impl NumberType {
    /// Its size in bytes.
    pub fn size(&self) -> usize {
        match self {
            NumberType::Int(n) | NumberType::Uint(n) => usize::from(*n),
            NumberType::Float32 => 4,
            NumberType::Float64 => 8,
        }
    }
}

impl std::fmt::Display for NumberType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NumberType::Int(n) => write!(f, "int{}", u16::from(*n) * 8),
            NumberType::Uint(n) => write!(f, "uint{}", u16::from(*n) * 8),
            NumberType::Float32 => f.write_str("float32"),
            NumberType::Float64 => f.write_str("float64"),
        }
    }
}

/// `valueType`, `byteOrder` and `scale`: the selected bytes read as a
/// number (BLE's byte order, little-endian, unless `byteOrder: big`), times
/// `scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Typed {
    pub number: NumberType,
    pub big_endian: bool,
    pub scale: Option<f64>,
}

/// The `valueType` names.
pub const VALUE_TYPES: &[&str] =
    &["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"];

/// Where a key's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    Characteristic { uuid: String, method: Method },
    Advertisement(AdvField),
}

/// One `telemetry[]` or `attributes[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<'a> {
    /// `devices[0].telemetry[1]`, for messages.
    pub path: String,
    /// Its device, an index into [`Schema::devices`].
    pub device: usize,
    pub section: Section,
    pub key: &'a str,
    pub source: DataSource,
    /// `valueExpression` (`[:]`, every byte, when absent).
    pub value_expression: &'a str,
    /// `compute`: an expression of `value`.
    pub compute: Option<&'a str>,
    /// `valueType` (with `byteOrder`, `scale`): tbgw's typed reading.
    pub typed: Option<Typed>,
    /// The whole entry (its `reportStrategy`).
    pub entry: &'a Value,
}

/// What an RPC does (`methodProcessing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processing {
    Read,
    Write,
    Scan,
}

/// One `serverSideRpc[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpc<'a> {
    pub method: &'a str,
    pub processing: Processing,
    /// Lowercase 128-bit; `None` for a scan.
    pub characteristic: Option<String>,
    pub with_response: bool,
}

/// One `attributeUpdates[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeUpdate<'a> {
    pub attribute: &'a str,
    pub characteristic: String,
}

/// Connection settings of a device, with the Python gateway's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// `pollPeriod`, ms (5000).
    pub poll_ms: u64,
    /// `timeout`, ms (10000): to connect, and for each GATT operation.
    pub timeout_ms: u64,
    /// `connectRetry` (5): attempts before the longer wait.
    pub retries: u64,
    /// `connectRetryInSeconds` (0; tbgw waits at least 1 s between attempts).
    pub retry_wait_ms: u64,
    /// `waitAfterConnectRetries` (0), seconds in the file.
    pub wait_after_retries_ms: u64,
}

/// One `devices[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Device<'a> {
    pub path: String,
    pub name: &'a str,
    pub device_type: Option<&'a str>,
    /// `MACAddress`, as `AA:BB:CC:DD:EE:FF`.
    pub address: String,
    pub connection: Connection,
    /// `showMap`: log the device's services and characteristics when it
    /// connects.
    pub show_map: bool,
    /// How characteristic values are read (`type`; `bytes` by default).
    pub characteristic_format: Format,
    /// How advertisement values are read (`type`; `hex` by default).
    pub advertisement_format: Format,
    pub attribute_updates: Vec<AttributeUpdate<'a>>,
    pub rpcs: Vec<Rpc<'a>>,
    /// The whole object (its `reportStrategy`).
    pub object: &'a Value,
}

impl Device<'_> {
    /// Whether the device is connected to (it has characteristic keys,
    /// writes, or RPCs that read or write): otherwise it is only listened
    /// to, by its advertisements.
    pub fn connects(&self, items: &[Item<'_>], index: usize) -> bool {
        self.show_map
            || !self.attribute_updates.is_empty()
            || self.rpcs.iter().any(|r| r.processing != Processing::Scan)
            || items.iter().any(|i| i.device == index && matches!(i.source, DataSource::Characteristic { .. }))
    }
}

/// Every device and key of a `ble.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema<'a> {
    pub devices: Vec<Device<'a>>,
    pub items: Vec<Item<'a>>,
}

/// The lowercase 128-bit form of a UUID as `ble.json` may write it: 16-bit
/// (`2A19`, `0x2a19`), 32-bit, or 128-bit with or without dashes.
pub fn uuid(text: &str) -> Result<String, String> {
    let t = text.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != '-').collect();
    if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("`{text}` is not a UUID: `{bad}` is not a hex digit"));
    }
    let hex = hex.to_ascii_lowercase();
    let full = match hex.len() {
        4 => format!("0000{hex}00001000800000805f9b34fb"),
        8 => format!("{hex}00001000800000805f9b34fb"),
        32 => hex,
        n => return Err(format!("`{text}` is not a UUID: {n} hex digits, expected 4, 8 or 32")),
    };
    Ok(format!("{}-{}-{}-{}-{}", &full[..8], &full[8..12], &full[12..16], &full[16..20], &full[20..]))
}

/// A MAC address as `AA:BB:CC:DD:EE:FF` (`-` accepted as the separator).
pub fn address(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit())) {
        return Err(format!("`{text}` is not a MAC address (six hex pairs: `4C:65:A8:DF:85:C0`)"));
    }
    Ok(parts.join(":").to_ascii_uppercase())
}

/// A company id: a number or its hex text (`"0x004C"`).
fn company(path: &str, v: &Value) -> Result<u16, ConfigError> {
    config::uint_or_hex(v)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| ConfigError::at(path, "expected a company id from 0 to 0xFFFF (`76` or `\"0x004C\"`)"))
}

fn ms(o: &mut Obj, key: &'static str, default: u64) -> Result<u64, ConfigError> {
    Ok(o.opt_uint(key, u64::from(u32::MAX))?.unwrap_or(default))
}

/// Read the `devices` of `doc` (the other keys are the connector's).
pub fn read(doc: &Value) -> Result<Schema<'_>, ConfigError> {
    let mut root = Obj::new("", doc)?;
    let list = match root.get("devices") {
        None => return Err(ConfigError::at("devices", "required: the devices to connect to or listen to")),
        Some(_) => config::array(&mut root, "devices")?,
    };
    if list.is_empty() {
        return Err(ConfigError::at("devices", "no device: the connector would read nothing"));
    }
    let mut devices: Vec<Device> = Vec::new();
    let mut items = Vec::new();
    for (path, value) in list {
        let index = devices.len();
        let mut o = Obj::new(path.clone(), value)?;
        let name = o.req_str("name")?;
        if name.trim().is_empty() {
            return Err(ConfigError::at(o.field("name"), "empty: ThingsBoard needs a device name"));
        }
        if let Some(other) = devices.iter().find(|d| d.name == name) {
            return Err(ConfigError::at(
                o.field("name"),
                format!("`{name}` is also the name of {}: requests could not tell them apart", other.path),
            ));
        }
        let device_type = o.opt_str("deviceType")?;
        let address = address(o.req_str("MACAddress")?).map_err(|e| ConfigError::at(o.field("MACAddress"), e))?;
        if let Some(other) = devices.iter().find(|d| d.address == address) {
            return Err(ConfigError::at(
                o.field("MACAddress"),
                format!("{address} is also the address of {}: one device, one entry", other.path),
            ));
        }
        let connection = Connection {
            poll_ms: ms(&mut o, "pollPeriod", 5000)?,
            timeout_ms: ms(&mut o, "timeout", 10_000)?,
            retries: o.opt_uint("connectRetry", u64::from(u32::MAX))?.unwrap_or(5),
            retry_wait_ms: o.opt_uint("connectRetryInSeconds", 86_400)?.unwrap_or(0) * 1000,
            wait_after_retries_ms: o.opt_uint("waitAfterConnectRetries", 86_400)?.unwrap_or(0) * 1000,
        };
        if connection.poll_ms == 0 {
            return Err(ConfigError::at(o.field("pollPeriod"), "0: a poll period must be at least 1 ms"));
        }
        if connection.timeout_ms == 0 {
            return Err(ConfigError::at(o.field("timeout"), "0: a timeout must be at least 1 ms"));
        }
        let show_map = o.opt_bool("showMap")?.unwrap_or(false);
        // The Python gateway's choice of converter class: `type` absent
        // reads characteristics as bytes and advertisements as hex.
        let (characteristic_format, advertisement_format) = match o.opt_str("type")? {
            None => (Format::Bytes, Format::Hex),
            Some("bytes") => (Format::Bytes, Format::Bytes),
            Some("hex") => (Format::Hex, Format::Hex),
            Some(other) => {
                return Err(ConfigError::at(o.field("type"), format!("`{other}`: expected bytes or hex")));
            }
        };
        for (section, key) in [(Section::Attributes, "attributes"), (Section::Telemetry, "telemetry")] {
            for (entry_path, entry) in config::array(&mut o, key)? {
                items.push(item(entry_path, index, section, entry)?);
            }
        }
        let mut attribute_updates = Vec::new();
        for (p, entry) in config::array(&mut o, "attributeUpdates")? {
            let mut e = Obj::new(p, entry)?;
            let attribute = e.req_str("attributeOnThingsBoard")?;
            let characteristic = characteristic(&mut e)?;
            e.finish()?;
            attribute_updates.push(AttributeUpdate { attribute, characteristic });
        }
        let mut rpcs: Vec<Rpc> = Vec::new();
        for (p, entry) in config::array(&mut o, "serverSideRpc")? {
            rpcs.push(rpc(p, entry)?);
        }
        if let Some((a, b)) = rpcs
            .iter()
            .enumerate()
            .find_map(|(i, r)| rpcs[..i].iter().position(|q| q.method == r.method).map(|j| (j, i)))
        {
            return Err(ConfigError::at(
                format!("{path}.serverSideRpc[{b}].methodRPC"),
                format!("`{}` is also the method of serverSideRpc[{a}]", rpcs[b].method),
            ));
        }
        o.allow(DEVICE_KEYS);
        if let Some(Value::String(class)) = o.get("extension") {
            return Err(ConfigError::at(
                o.field("extension"),
                format!("`{class}` is a Python converter class; tbgw's converters are WebAssembly components"),
            ));
        }
        o.finish()?;
        devices.push(Device {
            path,
            name,
            device_type,
            address,
            connection,
            show_map,
            characteristic_format,
            advertisement_format,
            attribute_updates,
            rpcs,
            object: value,
        });
    }
    Ok(Schema { devices, items })
}

fn characteristic(o: &mut Obj) -> Result<String, ConfigError> {
    let text = o.req_str("characteristicUUID")?;
    uuid(text).map_err(|e| ConfigError::at(o.field("characteristicUUID"), e))
}

fn rpc<'a>(path: String, entry: &'a Value) -> Result<Rpc<'a>, ConfigError> {
    let mut o = Obj::new(path, entry)?;
    let method = o.req_str("methodRPC")?;
    if matches!(method, "get" | "set") {
        return Err(ConfigError::at(
            o.field("methodRPC"),
            format!("`{method}` is reserved (get and set are built in)"),
        ));
    }
    let processing = match o.req_str("methodProcessing")?.to_ascii_lowercase().as_str() {
        "read" => Processing::Read,
        "write" => Processing::Write,
        "scan" => Processing::Scan,
        other => {
            return Err(ConfigError::at(
                o.field("methodProcessing"),
                format!("`{other}`: expected read, write or scan"),
            ));
        }
    };
    let with_response = o.opt_bool("withResponse")?.unwrap_or(false);
    let characteristic = match processing {
        Processing::Scan => {
            o.get("characteristicUUID");
            None
        }
        _ => Some(characteristic(&mut o)?),
    };
    o.finish()?;
    Ok(Rpc { method, processing, characteristic, with_response })
}

fn item(path: String, device: usize, section: Section, entry: &Value) -> Result<Item<'_>, ConfigError> {
    let mut o = Obj::new(path.clone(), entry)?;
    let key = o.req_str("key")?;
    let source = match o.opt_str("dataSourceType")?.unwrap_or("characteristic") {
        "characteristic" => {
            let uuid = characteristic(&mut o)?;
            let method = match o.req_str("method")? {
                "read" => Method::Read,
                "notify" => Method::Notify,
                other => return Err(ConfigError::at(o.field("method"), format!("`{other}`: expected read or notify"))),
            };
            DataSource::Characteristic { uuid, method }
        }
        "advertisement" => {
            // The Python gateway reads neither for an advertisement key.
            o.get("method");
            o.get("characteristicUUID");
            DataSource::Advertisement(adv_field(&mut o)?)
        }
        other => {
            return Err(ConfigError::at(
                o.field("dataSourceType"),
                format!("`{other}`: expected characteristic or advertisement"),
            ));
        }
    };
    let value_expression = o.opt_str("valueExpression")?.unwrap_or("[:]");
    let compute = o.opt_str("compute")?.filter(|c| !c.trim().is_empty());
    let typed = typed(&mut o)?;
    o.allow(&["reportStrategy"]);
    o.finish()?;
    Ok(Item { path, device, section, key, source, value_expression, compute, typed, entry })
}

fn typed(o: &mut Obj) -> Result<Option<Typed>, ConfigError> {
    let order = o.opt_str("byteOrder")?;
    let scale = match o.get("scale") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(_) => return Err(ConfigError::at(o.field("scale"), "expected a number (`0.01`)")),
    };
    let Some(name) = o.opt_str("valueType")? else {
        for (key, present) in [("byteOrder", order.is_some()), ("scale", scale.is_some())] {
            if present {
                return Err(ConfigError::at(o.field(key), "only with `valueType` (int16, uint32, float32, ...)"));
            }
        }
        return Ok(None);
    };
    let number = match name {
        "float32" => NumberType::Float32,
        "float64" => NumberType::Float64,
        _ => {
            let bits = |t: &str| t.parse::<u8>().ok().filter(|b| [8, 16, 32, 64].contains(b)).map(|b| b / 8);
            match (name.strip_prefix("uint").and_then(bits), name.strip_prefix("int").and_then(bits)) {
                (Some(n), _) => NumberType::Uint(n),
                (None, Some(n)) => NumberType::Int(n),
                _ => {
                    return Err(ConfigError::at(
                        o.field("valueType"),
                        format!("`{name}`: expected one of {}", VALUE_TYPES.join(", ")),
                    ));
                }
            }
        }
    };
    let big_endian = match order {
        None | Some("little") => false,
        Some("big") => true,
        Some(other) => return Err(ConfigError::at(o.field("byteOrder"), format!("`{other}`: expected little or big"))),
    };
    Ok(Some(Typed { number, big_endian, scale }))
}

fn adv_field(o: &mut Obj) -> Result<AdvField, ConfigError> {
    let company = match o.get("companyId") {
        None | Some(Value::Null) => None,
        Some(v) => Some(company(&o.field("companyId"), v)?),
    };
    let service = match o.opt_str("serviceUUID")? {
        None => None,
        Some(t) => Some(uuid(t).map_err(|e| ConfigError::at(o.field("serviceUUID"), e))?),
    };
    let field = match o.opt_str("advertisementData")?.unwrap_or("manufacturer") {
        "manufacturer" => AdvField::Manufacturer(company),
        "service" => AdvField::Service(service.clone()),
        "rssi" => AdvField::Rssi,
        "txPower" => AdvField::TxPower,
        "localName" => AdvField::LocalName,
        other => {
            return Err(ConfigError::at(
                o.field("advertisementData"),
                format!("`{other}`: expected manufacturer, service, rssi, txPower or localName"),
            ));
        }
    };
    if company.is_some() && !matches!(field, AdvField::Manufacturer(_)) {
        return Err(ConfigError::at(o.field("companyId"), "only for `advertisementData: manufacturer`"));
    }
    if service.is_some() && !matches!(field, AdvField::Service(_)) {
        return Err(ConfigError::at(o.field("serviceUUID"), "only for `advertisementData: service`"));
    }
    Ok(field)
}

#[cfg(test)]
mod tests;

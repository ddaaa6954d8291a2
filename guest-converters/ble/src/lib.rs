//! The built-in `ble` converters' logic, in plain Rust, configured with the
//! ThingsBoard IoT Gateway's `ble.json` (its `devices[]`, read with
//! [`tbgw_ble_items`]; the connector keys are ignored here):
//!
//! - [`UplinkConverter`]: a characteristic's value (read or notified) or an
//!   advertisement becomes one update of its device with every key that
//!   reads it, each decoded by its `valueExpression` ([`ValueExpr`]) and
//!   passed through its `compute`.
//! - [`DownlinkConverter`]: a shared attribute update of an
//!   `attributeUpdates[]` entry becomes a write of its characteristic; an
//!   RPC of a `serverSideRpc[]` entry a read, a write or a scan, and the
//!   reserved `get` and `set` (`characteristicUUID=2a00;value=...;`) a read
//!   or a write; their replies are the Python gateway's.
//!
//! Beside the Python gateway's two readings, a key may read its bytes as a
//! number (tbgw's extension): `valueType` (`int8` to `int64`, `uint8` to
//! `uint64`, `float32`, `float64`) of the bytes its `valueExpression`
//! selects (`[2:4]`; all of them without one), `byteOrder` (`little`, BLE's
//! and the default, or `big`), times `scale`.
//!
//! `compute` is a [`tbgw_expr`] expression of `value`, parsed when the
//! converter is created: the Python gateway's `eval` with the module's
//! globals is gone. It applies in both forms (the Python gateway applies it
//! to advertisement values only, where its `hex` converter reads them).

use serde_json::{Map, Value as Json};
use tbgw_ble_items::{
    self as items, AdvField, ConfigError, DataSource, Format, Method, NumberType, Processing, Section, Typed,
};
use tbgw_data::config;
use tbgw_data::{
    BleAdvertisement, BleRequest, ConvertedMessage, DeviceUpdate, DownlinkMessage, DownlinkRequest, Dropped, Entry,
    Key, RawUplink, RpcAnswer, Source, Telemetry, Value,
};
use tbgw_expr::Expr;
use tbgw_expr::data::{expression, to_value};

/// The name `compute` reads.
pub const COMPUTE_NAMES: &[&str] = &["value"];

/// One `[...]` of a `valueExpression`: a byte, or a slice as Python slices
/// (negative indices from the end, a bound left out is the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    At(i64),
    Slice(Option<i64>, Option<i64>),
}

impl Index {
    /// The bytes it picks; a byte out of range is an error (a slice, as in
    /// Python, is cut to what there is).
    fn pick<'d>(&self, data: &'d [u8]) -> Result<&'d [u8], String> {
        let len = data.len() as i64;
        let at = |i: i64| if i < 0 { (len + i).max(0) } else { i.min(len) } as usize;
        match *self {
            Index::At(i) => {
                let j = if i < 0 { len + i } else { i };
                if j < 0 || j >= len {
                    return Err(format!("byte [{i}] is beyond the value's {len} bytes"));
                }
                Ok(&data[j as usize..=j as usize])
            }
            Index::Slice(from, to) => {
                let (a, b) = (from.map_or(0, at), to.map_or(data.len(), at));
                Ok(if a < b { &data[a..b] } else { &[] })
            }
        }
    }
}

/// A `valueExpression`: text with `[i]` and `[from:to]` in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueExpr {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Index(Index),
}

impl ValueExpr {
    /// Parse it. A bracket whose inside is not an index or a slice is text
    /// (the Python gateway's pattern takes brackets of digits and colons).
    pub fn parse(text: &str) -> ValueExpr {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut literal = String::new();
        while let Some(open) = rest.find('[') {
            let (before, from_open) = rest.split_at(open);
            literal.push_str(before);
            let Some(close) = from_open.find(']') else {
                literal.push_str(from_open);
                rest = "";
                break;
            };
            match index(&from_open[1..close]) {
                Some(i) => {
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Index(i));
                }
                None => literal.push_str(&from_open[..=close]),
            }
            rest = &from_open[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        ValueExpr { parts }
    }

    /// The bytes the last index picks (all of them without an index).
    pub fn select<'d>(&self, data: &'d [u8]) -> Result<&'d [u8], String> {
        match self.parts.iter().rev().find_map(|p| match p {
            Part::Index(i) => Some(i),
            Part::Text(_) => None,
        }) {
            Some(i) => i.pick(data),
            None => Ok(data),
        }
    }

    /// `bytes`: every index written as its bytes' decimal numbers, one
    /// after another, in the text (`"[0:2]cm"` of `01 02` is `"12cm"`).
    /// `hex`: the last index's bytes as one big-endian unsigned integer (the
    /// Python gateway's hex converter keeps the last one too).
    pub fn decode(&self, format: Format, data: &[u8]) -> Result<Value, String> {
        match format {
            Format::Bytes => {
                let mut out = String::new();
                for p in &self.parts {
                    match p {
                        Part::Text(t) => out.push_str(t),
                        Part::Index(i) => i.pick(data)?.iter().for_each(|b| out.push_str(&b.to_string())),
                    }
                }
                Ok(Value::Text(out))
            }
            Format::Hex => {
                let Some(index) = self.parts.iter().rev().find_map(|p| match p {
                    Part::Index(i) => Some(i),
                    Part::Text(_) => None,
                }) else {
                    return Err("the valueExpression has no [index] to read (type hex)".to_owned());
                };
                let bytes = index.pick(data)?;
                if bytes.is_empty() {
                    return Err(format!("no bytes to read: the value has {} bytes", data.len()));
                }
                if bytes.len() > 8 {
                    return Err(format!("{} bytes are more than a 64-bit number holds", bytes.len()));
                }
                let n = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                Ok(i64::try_from(n).map_or_else(|_| Value::Text(n.to_string()), Value::Int))
            }
        }
    }
}

/// tbgw's typed reading: the bytes as the number `typed` says, scaled.
pub fn decode_typed(typed: &Typed, bytes: &[u8]) -> Result<Value, String> {
    let size = typed.number.size();
    if bytes.len() != size {
        return Err(format!(
            "{} bytes to read as {}, which takes {size} (select them with valueExpression, e.g. `[0:{size}]`)",
            bytes.len(),
            typed.number
        ));
    }
    let mut b = [0u8; 8];
    if typed.big_endian {
        b[8 - size..].copy_from_slice(bytes);
    } else {
        b[..size].copy_from_slice(bytes);
    }
    let raw = if typed.big_endian { u64::from_be_bytes(b) } else { u64::from_le_bytes(b) };
    let bits = size as u32 * 8;
    let value = match typed.number {
        NumberType::Uint(_) => match i64::try_from(raw) {
            Ok(i) => Value::Int(i),
            Err(_) if typed.scale.is_none() => return Ok(Value::Text(raw.to_string())),
            Err(_) => Value::Float(raw as f64),
        },
        // Sign-extend from the type's width.
        NumberType::Int(_) => Value::Int(((raw << (64 - bits)) as i64) >> (64 - bits)),
        NumberType::Float32 => Value::Float(f64::from(f32::from_bits(raw as u32))),
        NumberType::Float64 => Value::Float(f64::from_bits(raw)),
    };
    Ok(match (typed.scale, value) {
        (None, v) => v,
        (Some(k), Value::Int(i)) => Value::Float(i as f64 * k),
        (Some(k), Value::Float(x)) => Value::Float(x * k),
        (Some(_), v) => v,
    })
}

/// `i`, `from:to` (either bound may be left out), with optional `-`.
fn index(inside: &str) -> Option<Index> {
    let num = |s: &str| -> Option<Option<i64>> {
        let s = s.trim();
        if s.is_empty() { Some(None) } else { s.parse::<i64>().ok().map(Some) }
    };
    match inside.split_once(':') {
        Some((a, b)) => Some(Index::Slice(num(a)?, num(b)?)),
        None => num(inside)?.map(Index::At),
    }
}

/// One key, ready to decode.
#[derive(Debug, Clone)]
struct Decoder {
    device: usize,
    section: Section,
    key: Key,
    source: DataSource,
    format: Format,
    expr: ValueExpr,
    typed: Option<Typed>,
    compute: Option<Expr>,
}

#[derive(Debug, Clone)]
struct DeviceInfo {
    name: String,
    device_type: Option<String>,
    address: String,
}

fn devices(schema: &items::Schema) -> Vec<DeviceInfo> {
    schema
        .devices
        .iter()
        .map(|d| DeviceInfo {
            name: d.name.to_owned(),
            device_type: d.device_type.map(str::to_owned),
            address: d.address.clone(),
        })
        .collect()
}

/// The uplink converter: characteristic values and advertisements to
/// device updates.
#[derive(Debug)]
pub struct UplinkConverter {
    devices: Vec<DeviceInfo>,
    decoders: Vec<Decoder>,
}

impl UplinkConverter {
    pub fn new(text: &str) -> Result<UplinkConverter, ConfigError> {
        let doc = config::parse_document(text)?;
        let schema = items::read(&doc)?;
        let mut decoders = Vec::with_capacity(schema.items.len());
        for item in &schema.items {
            let dev = &schema.devices[item.device];
            let format = match item.source {
                DataSource::Characteristic { .. } => dev.characteristic_format,
                DataSource::Advertisement(_) => dev.advertisement_format,
            };
            let compute = match item.compute {
                Some(text) => expression(&format!("{}.compute", item.path), text, Some(COMPUTE_NAMES))?,
                None => None,
            };
            decoders.push(Decoder {
                device: item.device,
                section: item.section,
                key: Key::new(item.key),
                source: item.source.clone(),
                format,
                expr: ValueExpr::parse(item.value_expression),
                typed: item.typed,
                compute,
            });
        }
        Ok(UplinkConverter { devices: devices(&schema), decoders })
    }

    /// A value from the connector, for its device (by name, else by address).
    pub fn convert_message(&self, msg: &RawUplink) -> Result<ConvertedMessage, String> {
        let address = match &msg.source {
            Source::Characteristic(c) => &c.address,
            Source::Advertisement(a) => &a.address,
            _ => return Err("the `ble` converter takes characteristic values and advertisements".to_owned()),
        };
        let devices: Vec<usize> = match &msg.device {
            Some(name) => match self.devices.iter().position(|d| &d.name == name) {
                Some(i) => vec![i],
                None => return Err(format!("no device of this converter is named `{name}`")),
            },
            None => match self.devices.iter().position(|d| d.address.eq_ignore_ascii_case(address)) {
                Some(i) => vec![i],
                // No address (`tbgw converter test`): every device whose keys read it.
                None if address.is_empty() => (0..self.devices.len()).collect(),
                None => return Err(format!("no device of this converter has the address {address}")),
            },
        };
        let mut out = ConvertedMessage::default();
        for device in devices {
            self.convert_for(device, msg, &mut out);
        }
        Ok(out)
    }

    /// Device `device`'s keys that read `msg`, into `out`.
    fn convert_for(&self, device: usize, msg: &RawUplink, out: &mut ConvertedMessage) {
        // The connector's is in the lowercase 128-bit form already (no copy
        // per message); a test's may not be.
        let characteristic: Option<std::borrow::Cow<str>> = match &msg.source {
            Source::Characteristic(c) if is_canonical(&c.characteristic) => Some(c.characteristic.as_str().into()),
            Source::Characteristic(c) => items::uuid(&c.characteristic).ok().map(Into::into),
            _ => None,
        };
        let method = msg.metadata.iter().find(|(k, _)| k == items::METHOD_METADATA).map(|(_, v)| v.as_str());
        let (mut attributes, mut values) = (Vec::new(), Vec::new());
        for d in self.decoders.iter().filter(|d| d.device == device) {
            let raw = match (&msg.source, &d.source) {
                (Source::Characteristic(_), DataSource::Characteristic { uuid, method: m }) => {
                    let same_method =
                        !matches!((method, m), (Some("read"), Method::Notify) | (Some("notify"), Method::Read));
                    if characteristic.as_deref() != Some(uuid.as_str()) || !same_method {
                        continue;
                    }
                    Raw::Bytes(&msg.payload)
                }
                (Source::Advertisement(a), DataSource::Advertisement(field)) => match advertised(a, field) {
                    Some(raw) => raw,
                    // Not in this advertisement: a beacon may send several kinds.
                    None => continue,
                },
                _ => continue,
            };
            let value = match raw {
                Raw::Bytes(data) => match &d.typed {
                    Some(t) => d.expr.select(data).and_then(|b| decode_typed(t, b)),
                    None => d.expr.decode(d.format, data),
                },
                Raw::Value(v) => Ok(v),
            };
            let value = value.and_then(|v| match &d.compute {
                None => Ok(v),
                Some(e) => {
                    let v = to_val(&v);
                    let result = e.eval(&|name| (name == "value").then(|| v.clone()));
                    result.map_err(|err| format!("compute: {err}")).and_then(|r| to_value(r, "value"))
                }
            });
            match value {
                Ok(value) => {
                    let entry = Entry { key: d.key.clone(), value };
                    match d.section {
                        Section::Attributes => attributes.push(entry),
                        Section::Telemetry => values.push(entry),
                    }
                }
                Err(reason) => out.dropped.push(Dropped { key: d.key.as_str().to_owned(), reason }),
            }
        }
        if !attributes.is_empty() || !values.is_empty() {
            let info = &self.devices[device];
            let telemetry = if values.is_empty() { Vec::new() } else { vec![Telemetry { ts: None, values }] };
            out.updates.push(DeviceUpdate {
                device: info.name.clone(),
                device_type: info.device_type.clone(),
                attributes,
                telemetry,
            });
        }
    }
}

/// A UUID in the form the schema keeps them: lowercase, 128-bit, dashed.
fn is_canonical(uuid: &str) -> bool {
    uuid.len() == 36 && !uuid.bytes().any(|b| b.is_ascii_uppercase())
}

/// What a key reads before its expression: bytes, or a value as it is.
enum Raw<'a> {
    Bytes(&'a [u8]),
    Value(Value),
}

fn advertised<'a>(a: &'a BleAdvertisement, field: &AdvField) -> Option<Raw<'a>> {
    match field {
        AdvField::Manufacturer(company) => {
            a.manufacturer_data.iter().find(|m| company.is_none_or(|c| c == m.company)).map(|m| Raw::Bytes(&m.data))
        }
        AdvField::Service(uuid) => {
            a.service_data.iter().find(|s| uuid.as_ref().is_none_or(|u| *u == s.uuid)).map(|s| Raw::Bytes(&s.data))
        }
        AdvField::Rssi => a.rssi.map(|r| Raw::Value(Value::Int(r.into()))),
        AdvField::TxPower => a.tx_power.map(|t| Raw::Value(Value::Int(t.into()))),
        AdvField::LocalName => a.local_name.as_ref().map(|n| Raw::Value(Value::Text(n.clone()))),
    }
}

fn to_val(v: &Value) -> tbgw_expr::Val {
    use tbgw_expr::Val;
    match v {
        Value::Bool(b) => Val::Bool(*b),
        Value::Int(i) => Val::Int(*i),
        Value::Float(x) => Val::Float(*x),
        Value::Text(s) | Value::Json(s) => Val::Str(s.clone()),
    }
}

/// A value as the Python gateway writes it to a characteristic:
/// `str(value)` in UTF-8 (`True`, `21.5`, the text itself).
pub fn python_str(v: &Json) -> String {
    match v {
        Json::Bool(true) => "True".to_owned(),
        Json::Bool(false) => "False".to_owned(),
        Json::Null => "None".to_owned(),
        Json::String(s) => s.clone(),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(x)) if x.fract() == 0.0 && x.abs() < 1e16 => format!("{x:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

#[derive(Debug, Clone)]
struct DownDevice {
    name: String,
    /// (attribute, characteristic)
    attributes: Vec<(String, String)>,
    rpcs: Vec<DownRpc>,
}

#[derive(Debug, Clone)]
struct DownRpc {
    method: String,
    processing: Processing,
    characteristic: Option<String>,
    with_response: bool,
}

/// The downlink converter: attribute updates and RPCs to reads, writes and
/// scans, and their replies.
#[derive(Debug)]
pub struct DownlinkConverter {
    devices: Vec<DownDevice>,
}

impl DownlinkConverter {
    pub fn new(text: &str) -> Result<DownlinkConverter, ConfigError> {
        let doc = config::parse_document(text)?;
        let schema = items::read(&doc)?;
        let devices = schema
            .devices
            .iter()
            .map(|d| DownDevice {
                name: d.name.to_owned(),
                attributes: d
                    .attribute_updates
                    .iter()
                    .map(|a| (a.attribute.to_owned(), a.characteristic.clone()))
                    .collect(),
                rpcs: d
                    .rpcs
                    .iter()
                    .map(|r| DownRpc {
                        method: r.method.to_owned(),
                        processing: r.processing,
                        characteristic: r.characteristic.clone(),
                        with_response: r.with_response,
                    })
                    .collect(),
            })
            .collect();
        Ok(DownlinkConverter { devices })
    }

    fn device(&self, name: &str) -> Result<&DownDevice, String> {
        self.devices
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| format!("no device of this converter is named `{name}`"))
    }

    pub fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        let requests = match request {
            DownlinkRequest::Rpc(r) => vec![self.rpc(&r.device, &r.method, &r.params)?],
            DownlinkRequest::AttributeUpdate(u) => self.attribute_update(&u.device, &u.entries)?,
            DownlinkRequest::AttributeResponse(_) => {
                return Err("BLE devices make no attribute requests: nothing to answer".into());
            }
        };
        Ok(requests.into_iter().map(DownlinkMessage::Ble).collect())
    }

    /// A write (with response) of `str(value)` per key of the update that
    /// has an `attributeUpdates[]` entry, as the Python gateway writes.
    pub fn attribute_update(&self, device: &str, entries: &[Entry]) -> Result<Vec<BleRequest>, String> {
        let d = self.device(device)?;
        let mut out = Vec::new();
        for e in entries {
            for (_, characteristic) in d.attributes.iter().filter(|(name, _)| name == e.key.as_str()) {
                let text = match &e.value {
                    Value::Bool(b) => python_str(&Json::Bool(*b)),
                    Value::Int(i) => i.to_string(),
                    Value::Float(x) => python_str(&serde_json::Number::from_f64(*x).map_or(Json::Null, Json::Number)),
                    Value::Text(s) | Value::Json(s) => s.clone(),
                };
                out.push(BleRequest::Write {
                    characteristic: characteristic.clone(),
                    payload: text.into_bytes(),
                    with_response: true,
                });
            }
        }
        if out.is_empty() {
            let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            return Err(format!("no attributeUpdates entry of `{device}` is for {keys:?}"));
        }
        Ok(out)
    }

    /// An RPC's request: its `serverSideRpc[]` entry's read, write (of
    /// `str(params)`) or scan; `get` and `set` with `key=value;` params
    /// (`characteristicUUID=2a00;value=abc;`), as the Python gateway reads.
    pub fn rpc(&self, device: &str, method: &str, params: &str) -> Result<BleRequest, String> {
        let d = self.device(device)?;
        let json: Json = serde_json::from_str(params).unwrap_or_else(|_| Json::String(params.to_owned()));
        if matches!(method, "get" | "set") {
            let Json::String(text) = &json else {
                return Err(format!("`{method}` takes its params as text: characteristicUUID=<uuid>;value=<text>;"));
            };
            let param = |key: &str| {
                text.split(';')
                    .filter_map(|p| p.split_once('='))
                    .find(|(k, v)| k.trim() == key && !v.trim().is_empty())
                    .map(|(_, v)| v.trim())
            };
            let characteristic = param("characteristicUUID")
                .ok_or_else(|| format!("`{method}` needs characteristicUUID=<uuid>; in its params"))
                .and_then(items::uuid)?;
            return Ok(match method {
                "get" => BleRequest::Read(characteristic),
                _ => BleRequest::Write {
                    characteristic,
                    payload: param("value").ok_or("`set` needs value=<text>; in its params")?.as_bytes().to_vec(),
                    with_response: true,
                },
            });
        }
        let rpc = d
            .rpcs
            .iter()
            .find(|r| r.method == method)
            .ok_or_else(|| format!("`{device}` has no serverSideRpc entry for `{method}`"))?;
        let characteristic = || rpc.characteristic.clone().unwrap_or_default();
        Ok(match rpc.processing {
            Processing::Read => BleRequest::Read(characteristic()),
            Processing::Write => BleRequest::Write {
                characteristic: characteristic(),
                payload: python_str(&json).into_bytes(),
                with_response: rpc.with_response,
            },
            Processing::Scan => BleRequest::Scan,
        })
    }

    /// ThingsBoard's reply: a read's value as text (UTF-8, as the Python
    /// gateway decodes it; bytes that are not UTF-8 as hex), `"Ok"` for a
    /// write, the advertisement for a scan.
    pub fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        let Some(first) = answer.answers.first() else { return Ok(Json::String("Ok".into()).to_string()) };
        Ok(match &first.source {
            Source::Advertisement(a) => advertisement_json(a).to_string(),
            _ => match std::str::from_utf8(&first.payload) {
                Ok(text) => Json::String(text.to_owned()).to_string(),
                Err(_) => Json::String(tbgw_data::hex(&first.payload)).to_string(),
            },
        })
    }
}

/// An advertisement as JSON: `{"address", "rssi", "txPower", "localName",
/// "manufacturerData": {"0x004c": "hex"}, "serviceData": {uuid: "hex"},
/// "services": [...]}`.
pub fn advertisement_json(a: &BleAdvertisement) -> Json {
    let mut o = Map::new();
    o.insert("address".into(), Json::String(a.address.clone()));
    o.insert("rssi".into(), a.rssi.map_or(Json::Null, Json::from));
    o.insert("txPower".into(), a.tx_power.map_or(Json::Null, Json::from));
    o.insert("localName".into(), a.local_name.clone().map_or(Json::Null, Json::String));
    let md =
        a.manufacturer_data.iter().map(|m| (format!("0x{:04x}", m.company), Json::String(tbgw_data::hex(&m.data))));
    o.insert("manufacturerData".into(), Json::Object(md.collect()));
    let sd = a.service_data.iter().map(|s| (s.uuid.clone(), Json::String(tbgw_data::hex(&s.data))));
    o.insert("serviceData".into(), Json::Object(sd.collect()));
    o.insert("services".into(), Json::Array(a.services.iter().cloned().map(Json::String).collect()));
    Json::Object(o)
}

#[cfg(test)]
mod tests;

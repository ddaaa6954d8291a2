//! The built-in `modbus` converters' logic, in plain Rust: polled register
//! and coil blocks to ThingsBoard values, and ThingsBoard's requests to
//! Modbus writes, configured as a slave of the ThingsBoard IoT Gateway's
//! `modbus.json` (`master.slaves[]`):
//!
//! ```json
//! {"unitId": 1, "deviceName": "Meter A", "deviceType": "meter", "byteOrder": "BIG", "wordOrder": "LITTLE",
//!  "timeseries": [{"tag": "voltage", "type": "32float", "functionCode": 4, "address": 0, "objectsCount": 2}],
//!  "attributes": [{"tag": "serial", "type": "string", "functionCode": 3, "address": 100, "objectsCount": 4}],
//!  "attributeUpdates": [{"tag": "setpoint", "type": "16int", "functionCode": 6, "address": 10, "divider": 10}],
//!  "rpc": [{"tag": "setRelay", "type": "bits", "functionCode": 5, "address": 1}]}
//! ```
//!
//! The connection keys of a slave (`host`, `port`, `pollPeriod`, ...) are
//! the connector's and accepted here unread, so the whole slave object can
//! be passed as is.
//!
//! An `attributes`/`timeseries` entry may name an address range
//! (`"address": "0-9"`): it becomes one tag per value, keyed by its `tag`
//! with `${address}` and the other placeholders filled in.
//!
//! - [`codec`]: values to and from bytes: every type, byte and word order.
//! - [`UplinkConverter`]: a polled block (its unit, function code, first
//!   address and count; the payload is the registers big-endian as on the
//!   wire, or the coils packed LSB first) becomes one device update with
//!   every configured tag that lies wholly inside the block.
//!
//! Both take one slave, or every slave of a connector as `{"slaves": [...]}`
//! (one converter instance then serves them all; slaves whose tags are
//! written alike share one tag list), the slave being the message's
//! `device` metadata or the request's device.
//! - [`DownlinkConverter`]: an RPC whose method is an `rpc[]` tag, or a
//!   shared attribute update of `attributeUpdates[]` tags, becomes a write
//!   (function codes 5, 6, 15, 16) with target `<unit>/<fc>/<address>/<count>`
//!   and the bytes to write; an `rpc[]` tag with a read function code
//!   (1-4) becomes a read of that block, which the connector answers with
//!   the value decoded by [`codec`].

pub mod codec;

use codec::{DataType, Decoded, Format, Input, Order};
use serde_json::Value as Json;
use std::sync::Arc;
use tbgw_data::config::{self, ConfigError, Obj};
use tbgw_data::{
    ConvertedMessage, DeviceUpdate, DownlinkMessage, DownlinkRequest, Dropped, Entry, Key, ModbusRequest, RawUplink,
    RpcAnswer, Source, Telemetry, Value,
};

/// One configured tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub tag: Key,
    pub function_code: u8,
    pub address: u16,
    pub format: Format,
    /// `variants`: a decoded value (as the Python gateway writes it: `1`,
    /// `2.5`, `True`) to what is sent instead, e.g. `{"0": "off", "1": "on"}`.
    pub variants: Option<Arc<serde_json::Map<String, Json>>>,
}

impl Tag {
    /// What is sent for `decoded`: its variant if it has one.
    pub fn variant(&self, decoded: &Decoded) -> Option<&Json> {
        let variants = self.variants.as_ref()?;
        let key = match decoded {
            Decoded::Bool(true) => "True".to_owned(),
            Decoded::Bool(false) => "False".to_owned(),
            Decoded::Int(i) => i.to_string(),
            // Python's str() of a float: `2.0`, `2.5`.
            Decoded::Float(x) if x.fract() == 0.0 && x.abs() < 1e16 => format!("{x:.1}"),
            Decoded::Float(x) => x.to_string(),
            Decoded::Text(s) => s.clone(),
            Decoded::Bits(_) => return None,
        };
        variants.get(&key)
    }
}

/// The connection keys of a slave: the connector's, not the converter's.
const CONNECTION_KEYS: &[&str] = &[
    "host",
    "maxGap",
    "maxRegistersPerRequest",
    "port",
    "type",
    "method",
    "baudrate",
    "stopbits",
    "bytesize",
    "parity",
    "strict",
    "timeout",
    "retries",
    "delayBetweenRequestsMs",
    "retryOnEmpty",
    "retryOnInvalid",
    "pollPeriod",
    "connectAttemptTimeMs",
    "connectAttemptCount",
    "waitAfterFailedAttemptsMs",
    "name",
    "security",
    "handlesPerRequest",
    "repack",
    "framer",
    "unitId",
    "sendDataOnlyOnChange",
    "reportStrategy",
    "id",
];

pub use tbgw_modbus_tags::PROFILE_KEYS;

/// The slave's tag lists and orders. The lists are shared between slaves
/// configured alike (a field of identical meters costs one list).
#[derive(Debug, Clone, PartialEq)]
pub struct SlaveConfig {
    pub unit_id: u8,
    pub device_name: String,
    pub device_type: Option<String>,
    pub attributes: Arc<[Tag]>,
    pub timeseries: Arc<[Tag]>,
    pub attribute_updates: Arc<[Tag]>,
    pub rpc: Arc<[Tag]>,
    pub byte_order: Order,
    pub word_order: Order,
}

/// Every slave of a connector (`{"slaves": [...]}`) or one slave.
#[derive(Debug)]
pub struct Slaves(Vec<SlaveConfig>);

impl Slaves {
    /// Read `{"slaves": [...]}` (errors under `slaves[i]`), one slave, or
    /// the compact form a connector hands over for many slaves:
    /// `{"profiles": [<tags, orders>...], "slaves": [{"deviceName", "deviceType", "unitId", "profile": i}...]}`,
    /// where a profile may say with `"at"` where it is in the user's file
    /// (errors in it are reported there).
    pub fn parse(text: &str) -> Result<Slaves, ConfigError> {
        let doc = config::parse_document(text)?;
        if let Some(Json::Array(profiles)) = doc.get("profiles") {
            return Self::with_profiles(profiles, doc.get("slaves"));
        }
        let Some(Json::Array(slaves)) = doc.get("slaves") else {
            return SlaveConfig::parse(text).map(|s| Slaves(vec![s]));
        };
        let mut all: Vec<SlaveConfig> = Vec::new();
        let mut seen: Vec<(String, [Arc<[Tag]>; 4])> = Vec::new();
        for (i, slave) in slaves.iter().enumerate() {
            let mut parsed = SlaveConfig::parse(&slave.to_string()).map_err(|e| {
                let field = e.field.map_or_else(|| format!("slaves[{i}]"), |f| format!("slaves[{i}].{f}"));
                ConfigError::at(field, e.message)
            })?;
            // Share the lists of slaves whose tags are written alike (and
            // have the same unit, when range keys name it).
            let parts: Vec<String> =
                PROFILE_KEYS.iter().map(|k| slave.get(*k).map(Json::to_string).unwrap_or_default()).collect();
            let by_unit = parts[..2].iter().any(|p| p.contains("${unitId}"));
            let key: String = PROFILE_KEYS
                .iter()
                .zip(parts)
                .filter(|(k, _)| **k != "unitId" || by_unit)
                .map(|(_, part)| part)
                .collect::<Vec<_>>()
                .join("|");
            match seen.iter().find(|(k, _)| *k == key) {
                Some((_, [a, t, u, r])) => {
                    (parsed.attributes, parsed.timeseries, parsed.attribute_updates, parsed.rpc) =
                        (a.clone(), t.clone(), u.clone(), r.clone());
                }
                None => seen.push((
                    key,
                    [
                        parsed.attributes.clone(),
                        parsed.timeseries.clone(),
                        parsed.attribute_updates.clone(),
                        parsed.rpc.clone(),
                    ],
                )),
            }
            all.push(parsed);
        }
        Ok(Slaves(all))
    }

    fn with_profiles(profiles: &[Json], slaves: Option<&Json>) -> Result<Slaves, ConfigError> {
        let mut parsed = Vec::new();
        for (i, p) in profiles.iter().enumerate() {
            let mut p = p.clone();
            // Where the profile is in the user's file (its first slave), so
            // that an error names the user's path, not the compact form's.
            let mut at = format!("profiles[{i}]");
            if let Json::Object(o) = &mut p {
                if let Some(Json::String(path)) = o.remove("at") {
                    at = path;
                }
                o.insert("deviceName".into(), Json::String(format!("profile {i}")));
            }
            parsed.push(SlaveConfig::parse(&p.to_string()).map_err(|e| {
                ConfigError::at(
                    match e.field {
                        Some(f) if !at.is_empty() => format!("{at}.{f}"),
                        Some(f) => f,
                        None => at.clone(),
                    },
                    e.message,
                )
            })?);
        }
        let Some(Json::Array(slaves)) = slaves else {
            return Err(ConfigError::at("slaves", "required with profiles"));
        };
        let mut all = Vec::new();
        for (i, slave) in slaves.iter().enumerate() {
            let mut o = Obj::new(format!("slaves[{i}]"), slave)?;
            let device_name = o.req_str("deviceName")?.to_owned();
            let device_type = o.opt_str("deviceType")?.map(str::to_owned);
            let unit_id = o.opt_uint("unitId", 247)?.unwrap_or(1) as u8;
            let profile = o.opt_uint("profile", u64::MAX)?.unwrap_or(0) as usize;
            let p = parsed.get(profile).ok_or_else(|| ConfigError::at(o.field("profile"), "no such profile"))?;
            o.finish()?;
            all.push(SlaveConfig { device_name, device_type, unit_id, ..p.clone() });
        }
        Ok(Slaves(all))
    }

    /// The slave of `device` (the only one when there is one).
    pub fn get(&self, device: Option<&str>) -> Result<&SlaveConfig, String> {
        match (&self.0[..], device) {
            ([one], _) => Ok(one),
            (all, Some(device)) => all
                .iter()
                .find(|s| s.device_name == device)
                .ok_or_else(|| format!("no slave has the deviceName `{device}`")),
            (_, None) => Err("several slaves: the message must say which (metadata `device`)".into()),
        }
    }
}

impl SlaveConfig {
    pub fn parse(text: &str) -> Result<SlaveConfig, ConfigError> {
        let doc = config::parse_document(text)?;
        let mut root = Obj::new("", &doc)?;
        let unit_id = root.opt_uint("unitId", 247)?.unwrap_or(1) as u8;
        let device_name = root.req_str("deviceName")?.to_owned();
        let device_type = root.opt_str("deviceType")?.map(str::to_owned);
        let order = |root: &mut Obj, key: &'static str| -> Result<Order, ConfigError> {
            match root.opt_str(key)? {
                None => Ok(Order::Big),
                Some(t) => Order::parse(t).map_err(|e| ConfigError::at(root.field(key), e)),
            }
        };
        let byte_order = order(&mut root, "byteOrder")?;
        let word_order = order(&mut root, "wordOrder")?;
        let mut lists: [Vec<Tag>; 4] = Default::default();
        for (i, (key, codes)) in [
            ("attributes", tbgw_modbus_tags::READS),
            ("timeseries", tbgw_modbus_tags::READS),
            ("attributeUpdates", tbgw_modbus_tags::WRITES),
            ("rpc", tbgw_modbus_tags::RPC),
        ]
        .into_iter()
        .enumerate()
        {
            let ranges_allowed = i < 2;
            for (path, item) in config::array(&mut root, key)? {
                let orders = (byte_order, word_order);
                lists[i].extend(tags(&path, item, codes, orders, unit_id, ranges_allowed)?);
            }
        }
        root.allow(CONNECTION_KEYS);
        root.finish()?;
        let [attributes, timeseries, attribute_updates, rpc] = lists.map(Arc::from);
        Ok(SlaveConfig {
            unit_id,
            device_name,
            device_type,
            attributes,
            timeseries,
            attribute_updates,
            rpc,
            byte_order,
            word_order,
        })
    }
}

fn number(o: &mut Obj, key: &'static str) -> Result<Option<f64>, ConfigError> {
    match o.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => Ok(n.as_f64()),
        Some(Json::String(s)) => {
            s.trim().parse().map(Some).map_err(|_| ConfigError::at(o.field(key), format!("`{s}` is not a number")))
        }
        Some(other) => Err(ConfigError::at(o.field(key), format!("expected a number, found {}", config::kind(other)))),
    }
}

/// The tags of one config entry: one, or one per value of an address range
/// (its shape is the tag schema's, [`tbgw_modbus_tags::shape`]).
fn tags(
    path: &str,
    item: &Json,
    codes: &[u8],
    (byte_order, word_order): (Order, Order),
    unit_id: u8,
    ranges_allowed: bool,
) -> Result<Vec<Tag>, ConfigError> {
    let shape = tbgw_modbus_tags::shape(path, item, codes, ranges_allowed)?;
    let mut o = Obj::new(path, item)?;
    o.allow(&tbgw_modbus_tags::SHAPE_KEYS);
    let format = format(&mut o, &shape, byte_order, word_order)?;
    let variants = match o.get("variants") {
        None | Some(Json::Null) => None,
        Some(Json::Object(m)) => Some(Arc::new(m.clone())),
        Some(other) => {
            return Err(ConfigError::at(
                o.field("variants"),
                format!("expected an object of value: replacement, found {}", config::kind(other)),
            ));
        }
    };
    o.allow(&["reportStrategy", "id"]);
    o.finish()?;
    Ok(shape
        .tags(unit_id)
        .into_iter()
        .map(|(key, address)| Tag {
            tag: Key::from(key),
            function_code: shape.function_code,
            address,
            format,
            variants: variants.clone(),
        })
        .collect())
}

/// How an entry is decoded and encoded: its shape's type and objects, and
/// `bit`, `bitTargetType`, `divider`, `multiplier`, `round`.
fn format(
    o: &mut Obj,
    shape: &tbgw_modbus_tags::Shape,
    byte_order: Order,
    word_order: Order,
) -> Result<Format, ConfigError> {
    let (data_type, objects) = (shape.data_type, shape.objects);
    let bit = match o.opt_uint("bit", 15)? {
        Some(b) if data_type == DataType::Bits => Some(b as u8),
        Some(_) => return Err(ConfigError::at(o.field("bit"), "only for type bits")),
        None => None,
    };
    let bits_as_bool = match o.opt_str("bitTargetType")? {
        None | Some("bool") => true,
        Some("int") => false,
        Some(other) => {
            return Err(ConfigError::at(o.field("bitTargetType"), format!("`{other}`: expected bool or int")));
        }
    };
    let divider = number(o, "divider")?;
    let multiplier = number(o, "multiplier")?;
    if divider == Some(0.0) {
        return Err(ConfigError::at(o.field("divider"), "must not be 0"));
    }
    let round = o.opt_uint("round", 15)?.unwrap_or(6) as u8;
    Ok(Format { data_type, objects, byte_order, word_order, bit, bits_as_bool, divider, multiplier, round })
}

/// A polled block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub unit_id: u8,
    pub function_code: u8,
    pub address: u16,
    pub count: u16,
}

/// The uplink converter: one slave, or every slave of a connector
/// (`{"slaves": [...]}`), a block going to the slave the connector names.
#[derive(Debug)]
pub struct UplinkConverter(Slaves);

impl UplinkConverter {
    pub fn new(text: &str) -> Result<UplinkConverter, ConfigError> {
        Slaves::parse(text).map(UplinkConverter)
    }

    /// Convert a polled block: the message's source is the block, its
    /// device the slave's `deviceName`.
    pub fn convert_message(&self, msg: &RawUplink) -> Result<ConvertedMessage, String> {
        let Source::Registers(b) = &msg.source else {
            return Err(format!("the modbus converter takes polled register blocks, not {}", msg.source));
        };
        let block = Block { unit_id: b.unit_id, function_code: b.function_code, address: b.address, count: b.count };
        self.convert(msg.device.as_deref(), block, &msg.payload)
    }

    /// Decode every tag inside `block` from `payload`; `device` is the
    /// slave's `deviceName`.
    pub fn convert(&self, device: Option<&str>, block: Block, payload: &[u8]) -> Result<ConvertedMessage, String> {
        let c = self.0.get(device)?;
        let coils = matches!(block.function_code, 1 | 2);
        let have = if coils { usize::from(block.count).div_ceil(8) } else { usize::from(block.count) * 2 };
        if payload.len() < have {
            return Err(format!(
                "the block of {} {} at {} has {} bytes, expected {have}",
                block.count,
                if coils { "coils" } else { "registers" },
                block.address,
                payload.len()
            ));
        }
        let mut out = ConvertedMessage::default();
        let decode = |tags: &[Tag], dropped: &mut Vec<Dropped>| -> Vec<Entry> {
            let mut entries = Vec::new();
            for t in tags {
                if t.function_code != block.function_code
                    || t.address < block.address
                    || u32::from(t.address) + u32::from(t.format.objects)
                        > u32::from(block.address) + u32::from(block.count)
                {
                    continue;
                }
                let offset = usize::from(t.address - block.address);
                let decoded = if coils {
                    let bits = codec::unpack_bits(payload, usize::from(block.count));
                    codec::decode_bits(&bits[offset..], &t.format)
                } else {
                    codec::decode_registers(&payload[offset * 2..], &t.format)
                };
                match decoded {
                    Ok(v) => {
                        let value = match t.variant(&v) {
                            Some(Json::String(s)) => Value::Text(s.clone()),
                            Some(Json::Bool(b)) => Value::Bool(*b),
                            Some(Json::Number(n)) => {
                                n.as_i64().map_or(Value::Float(n.as_f64().unwrap_or(0.0)), Value::Int)
                            }
                            Some(other) => Value::Json(other.to_string()),
                            None => value(v),
                        };
                        entries.push(Entry { key: t.tag.clone(), value });
                    }
                    Err(reason) => dropped.push(Dropped { key: t.tag.to_string(), reason }),
                }
            }
            entries
        };
        let attributes = decode(&c.attributes, &mut out.dropped);
        let values = decode(&c.timeseries, &mut out.dropped);
        if !attributes.is_empty() || !values.is_empty() {
            let telemetry = if values.is_empty() { Vec::new() } else { vec![Telemetry { ts: None, values }] };
            out.updates.push(DeviceUpdate {
                device: c.device_name.clone(),
                device_type: c.device_type.clone(),
                attributes,
                telemetry,
            });
        }
        Ok(out)
    }
}

fn value(d: Decoded) -> Value {
    match d {
        Decoded::Bool(b) => Value::Bool(b),
        Decoded::Int(i) => Value::Int(i),
        Decoded::Float(x) => Value::Float(x),
        Decoded::Text(s) => Value::Text(s),
        Decoded::Bits(bits) => {
            Value::Json(format!("[{}]", bits.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",")))
        }
    }
}

/// The downlink converter: one slave, or every slave of a connector
/// (`{"slaves": [...]}`), a request going to the slave of its device.
#[derive(Debug)]
pub struct DownlinkConverter(Slaves);

impl DownlinkConverter {
    pub fn new(text: &str) -> Result<DownlinkConverter, ConfigError> {
        Slaves::parse(text).map(DownlinkConverter)
    }

    fn slave(&self, device: &str) -> Result<&SlaveConfig, String> {
        self.0.get(Some(device))
    }

    /// The requests that serve a request from ThingsBoard.
    pub fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        let requests = match request {
            DownlinkRequest::Rpc(r) => self.rpc(&r.device, &r.method, &r.params)?,
            DownlinkRequest::AttributeUpdate(u) => self.attribute_update(&u.device, &u.entries)?,
            DownlinkRequest::AttributeResponse(_) => {
                return Err("Modbus devices make no attribute requests: nothing to answer".into());
            }
        };
        Ok(requests.into_iter().map(DownlinkMessage::Modbus).collect())
    }

    /// ThingsBoard's reply to an RPC, as the Python gateway gives it:
    /// `{"result": {"value": v}}`, `v` being the value read (decoded as its
    /// `rpc[]` tag, or the reserved `get`'s params, say), or for a write the
    /// params written.
    pub fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        let request = &answer.request;
        let slave = self.slave(&request.device)?;
        let mut values: Vec<Json> = answer.answers.iter().map(|a| decode_answer(slave, request, a)).collect();
        let value = match values.len() {
            0 => serde_json::from_str(&request.params).unwrap_or_else(|_| Json::String(request.params.clone())),
            1 => values.remove(0),
            _ => Json::Array(values),
        };
        Ok(serde_json::json!({"result": {"value": value}}).to_string())
    }

    /// An RPC for `device`: `method` names an `rpc[]` tag; `params` (JSON
    /// text) is the value to write (or `{"value": ...}`).
    pub fn rpc(&self, device: &str, method: &str, params: &str) -> Result<Vec<ModbusRequest>, String> {
        let slave = self.slave(device)?;
        let (t, value) = match slave.rpc.iter().find(|t| t.tag == method) {
            Some(t) => (t.clone(), None),
            None => match reserved_rpc(method, params, slave.byte_order, slave.word_order) {
                Some(reserved) => reserved?,
                None => return Err(format!("no rpc entry has the tag `{method}`")),
            },
        };
        if matches!(t.function_code, 1..=4) {
            return Ok(vec![request(&t, Vec::new())]);
        }
        let v = match value {
            // `set`'s value is text: a number or `true` as JSON reads them.
            Some(text) => serde_json::from_str(&text).unwrap_or(Json::String(text)),
            None => match serde_json::from_str(params).map_err(|e| format!("RPC params: {e}"))? {
                Json::Object(mut o) => {
                    o.remove("value").ok_or("RPC params: give the value to write, or {\"value\": ...}")?
                }
                other => other,
            },
        };
        Ok(vec![write(&t, &input(&v)?)?])
    }

    /// A shared attribute update: one write per key with an
    /// `attributeUpdates[]` tag.
    pub fn attribute_update(&self, device: &str, entries: &[Entry]) -> Result<Vec<ModbusRequest>, String> {
        let slave = self.slave(device)?;
        let mut out = Vec::new();
        for e in entries {
            for t in slave.attribute_updates.iter().filter(|t| t.tag == e.key) {
                let v = match &e.value {
                    Value::Bool(b) => Input::Bool(*b),
                    Value::Int(i) => Input::Int(*i),
                    Value::Float(x) => Input::Float(*x),
                    Value::Text(s) => Input::Text(s.clone()),
                    Value::Json(j) => input(&serde_json::from_str(j).map_err(|err| format!("`{}`: {err}", e.key))?)?,
                };
                out.push(write(t, &v).map_err(|err| format!("`{}`: {err}", e.key))?);
            }
        }
        if out.is_empty() {
            let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            return Err(format!("no attributeUpdates entry has the tag of {keys:?}"));
        }
        Ok(out)
    }
}

/// The Python gateway's reserved RPCs, for registers no `rpc[]` entry
/// names: `get` with params `"type=<type>;functionCode=<1-4>;objectsCount=<n>;address=<a>;"`
/// and `set` with `"type=..;functionCode=<5|6|15|16>;objectsCount=..;address=..;value=<v>;"`.
/// `None` for other methods; else the tag (named after the method) and,
/// for `set`, the value as written.
pub fn reserved_rpc(
    method: &str,
    params: &str,
    byte_order: Order,
    word_order: Order,
) -> Option<Result<(Tag, Option<String>), String>> {
    let set = match method.to_ascii_lowercase().as_str() {
        "get" => false,
        "set" => true,
        _ => return None,
    };
    let schema = if set {
        "type=<type>;functionCode=<5|6|15|16>;objectsCount=<n>;address=<address>;value=<value>;"
    } else {
        "type=<type>;functionCode=<1-4>;objectsCount=<n>;address=<address>;"
    };
    // ThingsBoard sends the params as a JSON string; accept them bare too.
    let text = match serde_json::from_str::<Json>(params) {
        Ok(Json::String(s)) => s,
        _ => params.trim().to_owned(),
    };
    let (spec, value) = match text.split_once("value=") {
        Some((spec, value)) if set => (spec.to_owned(), Some(value.trim().trim_end_matches(';').to_owned())),
        _ if set => return Some(Err(format!("`{method}` params: no value=; expected {schema}"))),
        _ => (text, None),
    };
    let mut item = serde_json::Map::new();
    item.insert("tag".into(), Json::String(method.to_owned()));
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, v)) = part.split_once('=') else {
            return Some(Err(format!("`{method}` params: `{part}` is not key=value; expected {schema}")));
        };
        let v = v.trim();
        let v = match key.trim() {
            k @ ("functionCode" | "objectsCount" | "address") => match v.parse::<u64>() {
                Ok(n) => (k, Json::from(n)),
                Err(_) => return Some(Err(format!("`{method}` params: {k}={v} is not a whole number"))),
            },
            "type" => ("type", Json::String(v.to_owned())),
            other => return Some(Err(format!("`{method}` params: unknown key `{other}`; expected {schema}"))),
        };
        item.insert(v.0.into(), v.1);
    }
    let codes = if set { tbgw_modbus_tags::WRITES } else { tbgw_modbus_tags::READS };
    let tag = tags("params", &Json::Object(item), codes, (byte_order, word_order), 0, false)
        .map_err(|e| format!("`{method}`: {e}; expected {schema}"))
        .and_then(|mut t| t.pop().ok_or_else(|| format!("`{method}`: no register named")));
    Some(tag.map(|t| (t, value)))
}

fn write(t: &Tag, v: &Input) -> Result<ModbusRequest, String> {
    let payload = match t.function_code {
        5 | 15 => codec::pack_bits(&codec::encode_bits(v, &t.format)?),
        _ => codec::encode_registers(v, &t.format)?,
    };
    Ok(request(t, payload))
}

fn request(t: &Tag, payload: Vec<u8>) -> ModbusRequest {
    ModbusRequest { function_code: t.function_code, address: t.address, count: t.format.objects, payload }
}

/// The value a read answers, decoded with the format of its tag in the
/// slave's `rpc[]`, or of a reserved `get`'s params (the bytes in hex when
/// neither says, or the answer is not a block).
fn decode_answer(slave: &SlaveConfig, request: &tbgw_data::RpcRequest, answer: &RawUplink) -> Json {
    let hex = || Json::String(answer.payload.iter().map(|b| format!("{b:02x}")).collect());
    let Source::Registers(block) = &answer.source else { return hex() };
    let reads = |t: &Tag| t.function_code == block.function_code && t.address == block.address;
    let tag = match slave.rpc.iter().find(|t| t.tag == request.method.as_str() && reads(t)) {
        Some(t) => Some(t.clone()),
        None => match reserved_rpc(&request.method, &request.params, slave.byte_order, slave.word_order) {
            Some(Ok((t, _))) if reads(&t) => Some(t),
            _ => None,
        },
    };
    let Some(tag) = tag else { return hex() };
    let decoded = if matches!(block.function_code, 1 | 2) {
        codec::decode_bits(&codec::unpack_bits(&answer.payload, usize::from(block.count)), &tag.format)
    } else {
        codec::decode_registers(&answer.payload, &tag.format)
    };
    if let Ok(v) = &decoded
        && let Some(variant) = tag.variant(v)
    {
        return variant.clone();
    }
    match decoded {
        Ok(Decoded::Bool(b)) => Json::from(b),
        Ok(Decoded::Int(i)) => Json::from(i),
        Ok(Decoded::Float(x)) => serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number),
        Ok(Decoded::Text(s)) => Json::String(s),
        Ok(Decoded::Bits(b)) => Json::from(b),
        Err(e) => serde_json::json!({ "error": e }),
    }
}

fn input(v: &Json) -> Result<Input, String> {
    Ok(match v {
        Json::Bool(b) => Input::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Input::Int(i),
            None => Input::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Input::Text(s.clone()),
        Json::Array(items) => Input::Bits(
            items
                .iter()
                .map(|i| match i {
                    Json::Bool(b) => Ok(*b),
                    Json::Number(n) => Ok(n.as_i64() != Some(0)),
                    other => Err(format!("{other} is not a bit")),
                })
                .collect::<Result<_, _>>()?,
        ),
        other => return Err(format!("cannot write {other}")),
    })
}

#[cfg(test)]
mod tests;
